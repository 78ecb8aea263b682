"""Off-policy data: the cached teacher samples and the replay buffer.

Teacher samples y ~ p_T(.|x~) are generated once per (teacher checkpoint, teacher prompt view,
sampling config) and cached as an .npz that every method and seed of a sweep reuses: the cache
key covers neither the method nor the run seed. The replay buffer is a bounded FIFO of prompt
indices (its arrays live in the train state, so a resumed run replays exactly the same rows; they
are written with the checkpoint, atomically, and `check_replay` validates them on restore).
The cache file is written atomically and validated on load (`load_samples`): a truncated or
corrupt cache is regenerated, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cliffdistill.engine import sampling
from cliffdistill.run import distributed, rundir
from cliffdistill.data import prompts
from cliffdistill.run.assembly import Setup

log = logging.getLogger(__name__)


def digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else repr(p).encode())
    return h.hexdigest()[:20]


def checkpoint_identity(path: str) -> tuple:
    """What identifies a checkpoint: its resolved path and its weight, config and tokenizer
    files' sizes and mtimes."""
    root = Path(path).resolve()
    files = (sorted(root.glob("*.safetensors")) + [root / "config.json"]
             + sorted(root.glob("tokenizer*.json")))
    return (str(root),) + tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def sample_seed_of(cfg: Any) -> int:
    """The teacher samples' random seed: `off_policy.seed` (+ the run's seed, per_run_seed)."""
    c = cfg.off_policy
    return int(c.seed) + (int(cfg.seed) if c.per_run_seed else 0)


def teacher_samples(s: Setup, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Teacher completions (tokens [N, G], mask [N, G]) for every training prompt, cached.

    The cache key covers the teacher checkpoint, its prompt view tokens and the sampling config,
    never the method: every method of a sweep reuses the same samples. The sampling seed is
    `off_policy.seed`, plus the run's `seed` with `off_policy.per_run_seed` (then each run seed
    has its own samples, shared by the methods run with that seed).
    """
    c = s.cfg.off_policy
    sample_seed = sample_seed_of(s.cfg)
    teacher_path = s.cfg.teacher.path or s.cfg.student.path
    key = digest(checkpoint_identity(teacher_path), s.cfg.teacher.dtype, s.train.teacher,
                  s.train.teacher_mask, c.temperature, c.max_new_tokens, sample_seed, s.eos_ids,
                  s.cfg.moe_impl)
    file = cache_dir / f"teacher_samples_{key}.npz"
    shape = (s.train.teacher.shape[0], prompts.bucket_length(c.max_new_tokens, 1))
    cached = load_samples(file, shape, s.teacher_cfg.logit_vocab_size)
    if cached is not None:
        return cached
    out = sampling.generate_batched(
        s.teacher_cfg, s.teacher_params, None, s.train.teacher, s.train.teacher_mask,
        jax.random.key(sample_seed), sampling.SamplingParams.of(c.max_new_tokens, c.temperature),
        batch_size=c.gen_batch_size, gen_len=shape[1],
        eos_ids=s.eos_ids, pad_id=s.pad_id, mesh=s.mesh, moe_impl=s.cfg.moe_impl)
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    if distributed.is_main():
        save_samples(file, tokens, mask)
    return tokens, mask


def save_samples(file: Path, tokens: np.ndarray, mask: np.ndarray) -> None:
    """Temp file (per process) + rename: a process killed mid-write leaves no cache file, only a
    temp file that nothing reads, so the next run regenerates instead of trusting half a file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, tokens=tokens, mask=mask)
    rundir.fault_point("teacher_cache", 0)  # test hook: killed before the rename
    tmp.replace(file)


def load_samples(file: Path, shape: tuple[int, int], vocab_size: int
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (tokens, mask) in `file` when present and valid, else None (and a warning)
    so the caller rebuilds it: a truncated, corrupt or mismatched cache is never trusted."""
    if not file.exists():
        return None
    try:
        with file.open("rb") as f, np.load(f) as z:
            tokens, mask = z["tokens"], z["mask"]  # reading a member checks its CRC
        problem = samples_problem(tokens, mask, shape, vocab_size)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        problem = f"unreadable ({type(e).__name__}: {e})"
    if problem is None:
        return tokens, mask
    log.warning("teacher-sample cache %s is invalid (%s): regenerating it", file, problem)
    return None


def samples_problem(tokens: np.ndarray, mask: np.ndarray, shape: tuple[int, int],
                    vocab_size: int) -> str | None:
    """What is wrong with cached teacher samples (tokens/mask [N, G] of ids < vocab), or None."""
    if tokens.shape != shape or mask.shape != shape:
        return f"shapes {tokens.shape}/{mask.shape}, expected {shape}"
    if not np.issubdtype(tokens.dtype, np.integer) or mask.dtype != np.bool_:
        return f"dtypes {tokens.dtype}/{mask.dtype}, expected integer/bool"
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        return f"token ids outside [0, {vocab_size})"
    return None


def replay_push(replay: dict[str, Any], idx: np.ndarray) -> None:
    """Appends prompt indices to the bounded FIFO `replay` ({items [cap], size, ptr}) in place."""
    cap = len(replay["items"])
    for i in idx:
        replay["items"][int(replay["ptr"]) % cap] = i
        replay["ptr"] = np.asarray(int(replay["ptr"]) + 1, np.int64)
    replay["size"] = np.asarray(min(int(replay["size"]) + len(idx), cap), np.int64)


def check_replay(replay: dict[str, Any], n_prompts: int) -> None:
    """ValueError when a restored replay buffer is inconsistent (it would replay wrong rows):
    size within [0, capacity], ptr >= size, filled items indices of the n training prompts."""
    cap, size, ptr = len(replay["items"]), int(replay["size"]), int(replay["ptr"])
    if not 0 <= size <= cap or ptr < size:
        raise ValueError(f"replay buffer: size={size}, ptr={ptr}, capacity={cap} are inconsistent")
    filled = np.asarray(replay["items"])[:size]
    if filled.size and (filled.min() < 0 or filled.max() >= n_prompts):
        raise ValueError(f"replay buffer holds prompt indices outside [0, {n_prompts})")


def replay_draw(replay: dict[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
    """n prompt indices drawn uniformly (with replacement) from the buffer's filled part."""
    return replay["items"][rng.integers(0, int(replay["size"]), n)]
