"""Off-policy data: the cached teacher samples and the replay buffer.

Teacher samples y ~ p_T(.|x~) are generated once per (teacher checkpoint, teacher prompt view,
sampling config) and cached as an .npz that every method and seed of a sweep reuses: the cache
key covers neither the method nor the run seed. The replay buffer is a bounded FIFO of prompt
indices (its arrays live in the train state, so a resumed run replays exactly the same rows).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cliffdistill import sampling
from cliffdistill.data import prompts
from cliffdistill.setup import Setup


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else repr(p).encode())
    return h.hexdigest()[:20]


def _checkpoint_identity(path: str) -> tuple:
    """What identifies a teacher checkpoint: its resolved path and its files' sizes and mtimes."""
    root = Path(path).resolve()
    files = sorted(root.glob("*.safetensors")) + [root / "config.json"]
    return (str(root),) + tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def teacher_samples(s: Setup, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Teacher completions (tokens [N, G], mask [N, G]) for every training prompt, cached.

    The cache key covers the teacher checkpoint, its prompt view tokens and the sampling config;
    not the method or the run seed, so every method and seed of a sweep reuses the same samples.
    """
    c = s.cfg.off_policy
    teacher_path = s.cfg.teacher.path or s.cfg.student.path
    key = _digest(_checkpoint_identity(teacher_path), s.cfg.teacher.dtype, s.train.teacher,
                  s.train.teacher_mask, c.temperature, c.max_new_tokens, c.seed, s.eos_ids,
                  s.cfg.moe_impl)
    file = cache_dir / f"teacher_samples_{key}.npz"
    if file.exists():
        with file.open("rb") as f, np.load(f) as z:
            return z["tokens"], z["mask"]
    out = sampling.generate_batched(
        s.teacher_cfg, s.teacher_params, None, s.train.teacher, s.train.teacher_mask,
        jax.random.key(c.seed), sampling.SamplingParams.of(c.max_new_tokens, c.temperature),
        batch_size=c.gen_batch_size, gen_len=prompts.bucket_length(c.max_new_tokens, 1),
        eos_ids=s.eos_ids, pad_id=s.pad_id, mesh=s.mesh, moe_impl=s.cfg.moe_impl)
    if jax.process_index() == 0:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp.npz")
        with tmp.open("wb") as f:
            np.savez(f, tokens=out.tokens, mask=out.mask)
        tmp.replace(file)
    return out.tokens, out.mask


def replay_push(replay: dict[str, Any], idx: np.ndarray) -> None:
    """Appends prompt indices to the bounded FIFO `replay` ({items [cap], size, ptr}) in place."""
    cap = len(replay["items"])
    for i in idx:
        replay["items"][int(replay["ptr"]) % cap] = i
        replay["ptr"] = np.asarray(int(replay["ptr"]) + 1, np.int64)
    replay["size"] = np.asarray(min(int(replay["size"]) + len(idx), cap), np.int64)


def replay_draw(replay: dict[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
    """n prompt indices drawn uniformly (with replacement) from the buffer's filled part."""
    return replay["items"][rng.integers(0, int(replay["size"]), n)]
