"""Same tokenizer, padded vocabularies: config `vocab_size`, `ModelConfig.real_vocab_size`.

A teacher whose embedding is padded past the tokenizer (as Qwen2.5 pads 151,665 tokens to 151,936
or 152,064 rows) must train the student exactly as the same teacher unpadded: the padded rows get
no logit. The padded rows here are large random vectors, so any leak into a softmax shows."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cliffdistill import models
from cliffdistill.data import toy_tokenizer
from cliffdistill.models import transformer
from cliffdistill.run import assembly, loop
from tests.tiny import tiny_run_config

EXTRA = 40  # padded rows


def _padded_copy(src, dst, extra=EXTRA, tokenizer=True):
    """`src` with `extra` random embedding rows appended (tied embeddings: also the unembedding)."""
    cfg, params = models.load_hf(src, dtype=jnp.float32)
    rows = 5.0 * jax.random.normal(jax.random.key(7), (extra, cfg.hidden_size))
    params = {**params, "embed": jnp.concatenate([params["embed"], rows.astype(params["embed"].dtype)])}
    models.save_hf(cfg.replace(vocab_size=cfg.vocab_size + extra), params, dst)
    if tokenizer:
        for f in src.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(f, dst / f.name)
    return dst


def test_real_vocab_size_cuts_the_padded_rows(tiny_pair, tmp_path):
    cfg, params = models.load_hf(tiny_pair["teacher"], dtype=jnp.float32)
    pcfg, pparams = models.load_hf(_padded_copy(tiny_pair["teacher"], tmp_path / "t"),
                                   dtype=jnp.float32)
    tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % cfg.vocab_size
    want = models.apply(cfg, params, tokens)
    cut = models.apply(pcfg.replace(real_vocab_size=cfg.vocab_size), pparams, tokens)
    assert cut.shape == want.shape
    np.testing.assert_allclose(np.asarray(cut), np.asarray(want), atol=1e-6, rtol=0)
    full = models.apply(pcfg, pparams, tokens)  # uncut: the padded rows move every log-softmax
    assert full.shape[-1] == cfg.vocab_size + EXTRA
    assert np.abs(np.asarray(jax.nn.log_softmax(full)[..., :cfg.vocab_size]
                             - jax.nn.log_softmax(want))).max() > 1e-2
    with pytest.raises(ValueError, match=r"real_vocab_size=.*must be in \[0, vocab_size="):
        cfg.replace(real_vocab_size=cfg.vocab_size + 1)


@pytest.mark.parametrize("on_policy", ["sampled_rkl", "jsd"])
def test_a_padded_teacher_trains_the_student_exactly_as_unpadded(tiny_pair, tmp_path, on_policy):
    padded = _padded_copy(tiny_pair["teacher"], tmp_path / "padded")
    runs = {}
    for name, teacher in (("plain", tiny_pair["teacher"]), ("padded", padded)):
        cfg = tiny_run_config(tiny_pair, "on_policy_gkd", steps=2)
        cfg.teacher.path, cfg.loss.on_policy = str(teacher), on_policy
        s = assembly.make_setup(cfg)
        vocab = len(s.tokenizer)
        assert s.teacher_cfg.logit_vocab_size == s.student_cfg.logit_vocab_size == vocab
        loop.run(cfg, tmp_path / name, setup_obj=s, progress=False)
        runs[name] = [{k: v for k, v in json.loads(line).items()
                       if not k.startswith(("time/", "mfu", "seconds"))}
                      for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert s.teacher_cfg.vocab_size == vocab + EXTRA
    assert len(runs["plain"]) == len(runs["padded"]) == 2
    for a, b in zip(runs["plain"], runs["padded"]):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_different_tokenizer_is_refused_with_both_paths(tiny_pair, tmp_path):
    other = _padded_copy(tiny_pair["teacher"], tmp_path / "other", tokenizer=False)
    size = len(toy_tokenizer.SPECIAL_TOKENS) + 97 + 20  # the alphabet and 20 other merges
    toy_tokenizer.save_tokenizer(
        toy_tokenizer.train_tokenizer(["zzz qqq 123 + 456 = 579"] * 50, vocab_size=size), other)
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", steps=2)
    cfg.teacher.path = str(other)
    with pytest.raises(ValueError, match=r"tokenizer mismatch.*vocab_size=.*"
                                         rf"{tiny_pair['student']}.*{other}"):
        assembly.validate_config(cfg)
    for f in other.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    with pytest.raises(ValueError, match=r"teacher.path=.* has no tokenizer"):
        assembly.validate_config(cfg)


def test_vocab_size_beyond_an_embedding_is_refused(tiny_pair):
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", steps=2)
    s = assembly.make_setup(cfg)
    cfg.vocab_size = len(s.tokenizer) + 1
    with pytest.raises(ValueError, match=r"config field `vocab_size`=.*smaller embedding has"):
        assembly.make_setup(cfg)
