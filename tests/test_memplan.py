"""The memory planner against XLA's own allocation on CPU, the fit check, and cost accounting.

"Measured" here is what XLA allocates for one compiled step on the (fake) CPU device:
`compiled.memory_analysis()` = arguments + outputs + the temp buffer (the packed peak of every
intermediate's live range) - aliased (donated) bytes. The CPU client reports no
`memory_stats()`, and process RSS is dominated by the Python/XLA runtime at these sizes, so this
is the honest per-device number (docs/SCALING.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from cliffdistill import models
from cliffdistill.run import memplan as planner
from cliffdistill.engine import sampling, scoring, update
from cliffdistill.run import assembly, config_io
from cliffdistill.run import loop
from cliffdistill.models import config as model_config
from cliffdistill.models import hf_io, sharding, transformer
from cliffdistill.models.config import ModelConfig
from cliffdistill.models.lora import LoraConfig, init_lora
from configs import base
from tests.tiny import tiny_run_config

REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30
TOL = 0.15

# A student/teacher pair big enough that weights and the KV cache dominate XLA's own overhead
# (student ~24 MB fp32, its rollout cache ~31 MB; teacher ~60 MB), small enough to compile fast.
# Six layers: `transformer` unrolls stacks of <= 4 layers, real models run a rolled scan.
STUDENT = ModelConfig(model_type="qwen3", vocab_size=8192, hidden_size=256, num_layers=6,
                      num_heads=8, num_kv_heads=4, head_dim=32, intermediate_size=768,
                      tie_word_embeddings=True, eos_token_ids=(1,), pad_token_id=0)
TEACHER = ModelConfig(model_type="qwen3", vocab_size=8192, hidden_size=384, num_layers=6,
                      num_heads=8, num_kv_heads=4, head_dim=48, intermediate_size=1024,
                      eos_token_ids=(1,), pad_token_id=0)
MOE_TEACHER = ModelConfig(model_type="qwen3_moe", vocab_size=8192, hidden_size=256, num_layers=6,
                          num_heads=8, num_kv_heads=4, head_dim=32, intermediate_size=768,
                          num_experts=16, num_experts_per_tok=4, moe_intermediate_size=128,
                          eos_token_ids=(1,), pad_token_id=0)


def _write_config(m: ModelConfig, path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model_config.to_hf_config(m)))
    return str(path)


def _run_config(tmp_path: Path, student: ModelConfig = STUDENT, teacher: ModelConfig = TEACHER,
                method: str = "on_policy_gkd"):
    """A run config whose models exist only as config.json (the planner reads nothing else)."""
    c = base.get_config()
    c.method, c.setup = method, "size"
    c.student.path = _write_config(student, tmp_path / "student")
    c.teacher.path = _write_config(teacher, tmp_path / "teacher")
    c.student.dtype = c.teacher.dtype = "float32"
    c.lora.rank, c.lora.alpha = 8, 16.0
    c.rollout.batch_size, c.rollout.max_prompt_len, c.rollout.max_new_tokens = 16, 64, 256
    c.eval.batch_size, c.eval.max_new_tokens = 16, 256
    c.off_policy.gen_batch_size, c.off_policy.max_new_tokens = 16, 256
    c.loss.vocab_chunk = 1024
    return c


# ----------------------------------------------------------------------------- compiled memory


def _abstract(tree, mesh, spec_fn):
    if mesh is None:
        return tree
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, spec_fn(tree))


def _compiled_bytes(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
            "temp": m.temp_size_in_bytes, "alias": m.alias_size_in_bytes, "total": total}


class Compiled:
    """Compiles the three jitted steps of a run (shapes only, nothing is allocated or run)."""

    def __init__(self, cfg, student: ModelConfig, teacher: ModelConfig, mesh_shape=None):
        self.cfg = cfg
        self.s, self.t = student, teacher
        self.mesh = sharding.make_mesh(mesh_shape) if mesh_shape else None
        dt = jnp.dtype(cfg.student.dtype)
        self.b = planner.buckets(cfg)
        self.B, self.P, self.G = self.b.rows, self.b.prompt, self.b.gen

        def params(m):
            shapes = transformer.param_shapes(m, dt)
            return _abstract(shapes, self.mesh,
                             lambda t: sharding.param_shardings(m, self.mesh, t))

        self.sp, self.tp = params(student), params(teacher)
        lcfg = LoraConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha, targets=tuple(cfg.lora.targets))
        lora = jax.eval_shape(lambda: init_lora(student, lcfg, jax.random.key(0),
                                                transformer.param_shapes(student, dt)))
        rep = lambda t: jax.tree_util.tree_map(lambda _: sharding.replicated(self.mesh), t)
        self.lora = _abstract(lora, self.mesh, rep)
        self.optimizer = update.make_optimizer(assembly.optim_config(cfg), 1)
        self.opt = _abstract(jax.eval_shape(self.optimizer.init, self.lora.layers), self.mesh, rep)

    def _batch(self, shape, dtype):
        sh = (sharding.batch_sharding(self.mesh, len(shape), shape[0]) if self.mesh else None)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)

    def _scalar(self, dtype):
        return jax.ShapeDtypeStruct((), dtype, sharding=sharding.replicated(self.mesh)
                                    if self.mesh else None)

    def _ctx(self):
        import contextlib

        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def rollout(self) -> dict[str, int]:
        i32, f32 = jnp.int32, jnp.float32
        args = (self.sp, self.lora, self._batch((self.B, self.P), i32),
                self._batch((self.B, self.P), bool), jax.eval_shape(lambda: jax.random.key(0)),
                self._batch((self.B,), i32),
                sampling.SamplingParams(self._scalar(f32), self._scalar(i32), self._scalar(f32),
                                        self._scalar(i32)))
        with self._ctx():
            c = sampling.generate_arrays.trace(self.s, *args, gen_len=self.G, eos_ids=(1,),
                                               pad_id=0).lower().compile()
        return _compiled_bytes(c)

    def score(self) -> dict[str, int]:
        Pt = self.b.teacher_prompt
        with self._ctx():
            c = scoring.score.trace(
                self.t, self.tp, self._batch((self.B, Pt), jnp.int32),
                self._batch((self.B, Pt), bool), self._batch((self.B, self.G), jnp.int32),
                self._batch((self.B, self.G), bool),
                vocab_chunk=self.cfg.loss.vocab_chunk).lower().compile()
        return _compiled_bytes(c)

    def update(self) -> dict[str, int]:
        cfg = self.cfg
        spec = update.UpdateSpec(
            student=self.s, teacher=self.t, scale=models.LoraConfig.from_section(cfg.lora).scale, has_on=True,
            has_off=False, has_anchor=False, on_loss="sampled_rkl", off_loss="nll",
            shift_off=True, vocab_chunk=cfg.loss.vocab_chunk,
            remat=cfg.loss.remat, moe_impl=cfg.moe_impl,
            optim=assembly.optim_config(cfg), num_steps=0)
        i32, f32, B, P, G = jnp.int32, jnp.float32, self.B, self.P, self.G
        batch = {"on": {"prompt": self._batch((B, P), i32), "prompt_mask": self._batch((B, P), bool),
                        "completion": self._batch((B, G), i32),
                        "loss_mask": self._batch((B, G), bool),
                        "lp_old": self._batch((B, G), f32), "lp_teacher": self._batch((B, G), f32)}}
        plan = {k: self._scalar(f32) for k in
                ("on_weight", "off_weight", "anchor_beta", "kl_discount", "jsd_beta")}
        with self._ctx():
            c = update.update_fn(spec).trace(self.lora.layers, self.opt, self.sp, None, batch,
                                            plan).lower().compile()
        return _compiled_bytes(c)

    def cache_bytes(self) -> int:
        """The exact KV cache of the rollout, from the shapes `transformer.prefill` returns."""
        S = self.P + self.G
        cache = jax.eval_shape(
            lambda p, t, m: transformer.prefill(self.s, p, t, m, S)[1],
            transformer.param_shapes(self.s, jnp.dtype(self.cfg.student.dtype)),
            jax.ShapeDtypeStruct((self.B, self.P), jnp.int32),
            jax.ShapeDtypeStruct((self.B, self.P), bool))
        return sum(x.size * x.dtype.itemsize for x in (cache.k, cache.v, cache.valid))


def _compare(p: planner.MemoryPlan, measured: dict[str, dict[str, int]]) -> dict[str, tuple[int, int]]:
    """(planned, measured) per jitted step: the plan's items that are that step's arguments
    (params, LoRA, optimizer state) plus its transients, against XLA's total for the step."""
    it = p.items
    lora = it["LoRA params (fp32, replicated)"]
    out = {}
    if "rollout" in measured:
        out["rollout"] = (it["student params"] + lora + it["rollout KV cache (student)"]
                          + it["rollout prefill/decode activations"], measured["rollout"]["total"])
    if "score" in measured:
        out["score"] = (it["teacher params"] + it["teacher scoring activations"],
                        measured["score"]["total"])
    if "update" in measured:
        out["update"] = (it["student params"] + lora + it["AdamW moments (2 x LoRA)"]
                         + it["update: saved residuals"] + it["update: one layer fwd+bwd, loss head"]
                         + it["update: LoRA grads + optimizer temps"], measured["update"]["total"])
    return out


def _assert_within(pairs: dict[str, tuple[int, int]], lo: float = 1 - TOL, hi: float = 1 + TOL):
    report = {k: f"planned {a / 2**20:.1f} MiB, measured {b / 2**20:.1f} MiB ({a / b:.3f})"
              for k, (a, b) in pairs.items()}
    for a, b in pairs.values():
        assert lo <= a / b <= hi, report


def test_plan_matches_xla_allocation_on_cpu(tmp_path):
    cfg = _run_config(tmp_path)
    p = planner.plan(cfg, platform="cpu")
    c = Compiled(cfg, STUDENT, TEACHER)
    # exact parts: params (one device) and the KV cache the sampler builds
    dt = jnp.float32
    assert p.items["student params"] == sum(
        x.size * 4 for x in jax.tree_util.tree_leaves(transformer.param_shapes(STUDENT, dt)))
    assert p.items["rollout KV cache (student)"] == pytest.approx(c.cache_bytes(), abs=16)
    measured = {"rollout": c.rollout(), "score": c.score(), "update": c.update()}
    pairs = _compare(p, measured)
    _assert_within(pairs)
    # The rollout is the weights + KV cache case: together they are most of what XLA allocates.
    r = measured["rollout"]["total"]
    assert (p.items["student params"] + p.items["rollout KV cache (student)"]) / r > 0.6
    # Phase peaks: the same, plus the persistent device arrays the step does not take as
    # arguments (exact sizes): the teacher's weights and the AdamW moments during the rollout...
    other = p.items["teacher params"] + p.items["AdamW moments (2 x LoRA)"]
    assert p.phases["rollout"] / (r + other) == pytest.approx(1, abs=TOL)
    # ... and everything but the teacher's weights while the teacher scores.
    other = p.persistent - p.items["teacher params"]
    assert p.phases["teacher scoring"] / (measured["score"]["total"] + other) == pytest.approx(
        1, abs=TOL)


@pytest.mark.slow
def test_plan_matches_xla_allocation_moe_and_sharded(tmp_path):
    # MoE teacher scoring (CPU: JAX expands ragged_dot densely, which the plan models)
    cfg = _run_config(tmp_path / "moe", teacher=MOE_TEACHER)
    p = planner.plan(cfg, platform="cpu")
    _assert_within(_compare(p, {"score": Compiled(cfg, STUDENT, MOE_TEACHER).score()}))
    # an 8-device mesh: per-device shards of params, cache (batch over data*fsdp, heads over
    # tensor) and activations
    cfg = _run_config(tmp_path / "mesh")
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    p = planner.plan(cfg, platform="cpu")
    c = Compiled(cfg, STUDENT, TEACHER, dict(cfg.mesh))
    _assert_within(_compare(p, {"score": c.score()}))
    # Since the live-prefix decode (per-layer windows sliced out of the cache) the sharded
    # rollout compiles to a lower peak (19.2 MB here, 30.2 MB before; single-device unchanged at
    # 68.5 MB): the plan still counts the old peak, so it errs high (~1.5x) on this mesh.
    _assert_within(_compare(p, {"rollout": c.rollout()}), hi=1.6)
    # The SPMD-partitioned update packs its buffers tighter than the single-device calibration
    # (and gathers only shards of the unembedding): the plan errs high there, by ~35% at this
    # size (docs/SCALING.md). Guard the direction and the size of that error.
    _assert_within(_compare(p, {"update": c.update()}), hi=1.45)


def test_param_bytes_match_the_loaded_shards(tiny_pair):
    cfg = tiny_run_config(tiny_pair)
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = sharding.make_mesh(dict(cfg.mesh))
    student = model_config.load_hf_config(tiny_pair["student"])
    _, params = hf_io.load_hf(tiny_pair["student"], dtype=jnp.float32, mesh=mesh)
    on_device0 = sum(s.data.nbytes for leaf in jax.tree_util.tree_leaves(params)
                     for s in leaf.addressable_shards if s.device == mesh.devices.flat[0])
    planned = planner.param_bytes_per_device(student, planner.MeshShape.of(dict(cfg.mesh)), "float32")
    assert planned == on_device0 == hf_io.host_bytes_per_device(student, mesh, jnp.float32)


@pytest.mark.parametrize("preset", ["mixtral_8x7b", "qwen25_72b", "qwen3_30b_a3b", "llama33_70b"])
@pytest.mark.parametrize("mesh", [dict(tensor=8), dict(tensor=4, expert=2), dict(tensor=1)])
def test_one_layers_weights_follow_the_sharding_rules(preset, mesh):
    """The layer slice the scan materialises (`layer_weights_bytes`) is the per-device share of
    the stacked layer params under the loader's sharding rules, norms aside: expert weights split
    over `expert` and each expert's F over `tensor`, Qwen2's q/k/v biases counted."""
    m, shape = model_config.preset(preset), planner.MeshShape(**mesh)
    shapes = transformer.param_shapes(m, jnp.bfloat16)["layers"]
    axes = sharding.param_logical_axes(m)["layers"]
    per_device = 0
    for name, leaf in shapes.items():
        if name.endswith("norm"):
            continue
        spec = sharding.logical_to_spec(axes[name], leaf.shape, shape.as_dict())
        n = leaf.size * leaf.dtype.itemsize
        for part in spec:
            for ax in (() if part is None else (part,) if isinstance(part, str) else part):
                n //= shape.as_dict()[ax]
        per_device += n
    assert planner.layer_weights_bytes(m, shape, 2) == per_device // m.num_layers


def test_refusal_names_the_largest_term(tmp_path):
    cfg = _preset_config(tmp_path, "llama33_70b", "llama31_405b", 80)
    with pytest.raises(ValueError, match=r"the largest term is 'teacher params' \(\d+\.\d+ GiB\)"):
        planner.check_fits(cfg)


def test_smallest_mesh_is_the_fewest_devices_that_fit():
    cfg = config_io.load_config_file("configs/scaleup.py:mixtral")
    hbm = int(79.6 * GiB)
    mesh, p = planner.smallest_mesh(cfg, hbm, student="mistral_7b", teacher="mixtral_8x7b")
    assert p.fits and p.total <= hbm and p.mesh == mesh.as_dict()
    for smaller in planner.candidate_meshes(mesh.devices // 2, experts=8):
        trial = cfg.copy_and_resolve_references()
        trial.mesh.update(smaller.as_dict())
        assert not planner.plan(trial, hbm, student="mistral_7b", teacher="mixtral_8x7b").fits
    with pytest.raises(ValueError, match=r"no mesh of up to 1 devices.*largest term"):
        planner.smallest_mesh(cfg, hbm, student="mistral_7b", teacher="mixtral_8x7b",
                              max_devices=1)


@pytest.mark.parametrize("pair,student,teacher", [("mixtral", "mistral_7b", "mixtral_8x7b"),
                                                  ("qwen25", "qwen25_32b", "qwen25_72b"),
                                                  ("llama405", "llama33_70b", "llama31_405b")])
def test_scaleup_configs_ship_the_smallest_h100_mesh(pair, student, teacher):
    cfg = config_io.load_config_file(f"configs/scaleup.py:{pair}")
    mesh, _ = planner.smallest_mesh(cfg, int(79.6 * GiB), student=student, teacher=teacher)
    assert dict(cfg.mesh) == mesh.as_dict()


# ----------------------------------------------------------------------------- the fit check


def _preset_config(tmp_path: Path, student: str, teacher: str, hbm_gib: float):
    c = base.get_config()
    c.student.path = _write_config(model_config.preset(student), tmp_path / student)
    c.teacher.path = _write_config(model_config.preset(teacher), tmp_path / teacher)
    c.hbm_bytes_per_device = int(hbm_gib * GiB)
    return c


def test_too_large_config_is_refused_before_loading_weights(tmp_path):
    cfg = _preset_config(tmp_path, "qwen3_4b", "qwen3_30b_a3b", 16)
    with pytest.raises(ValueError) as e:
        assembly.validate_config(cfg)  # the checkpoint dirs hold only config.json: nothing loads
    msg = str(e.value)
    assert "16.00 GiB" in msg and "shard the models" in msg, msg
    for row in ("student params", "teacher params", "rollout KV cache (student)", "update",
                "DOES NOT FIT"):
        assert row in msg, row
    # on a GPU with 200 GiB it would fit (check_fits plans for this host's platform: CPU, where
    # JAX expands the MoE's ragged_dot densely, so there it still does not)
    assert planner.plan(cfg, 200 * GiB, platform="gpu").fits
    assert not planner.plan(cfg, 200 * GiB, platform="cpu").fits


def test_batch_too_large_names_the_largest_batch_that_fits(tmp_path):
    cfg = _preset_config(tmp_path, "qwen3_4b", "qwen3_4b", 40)
    p = planner.plan(cfg, 40 * GiB)
    assert not p.fits and 0 < p.max_batch < cfg.rollout.batch_size
    assert planner.plan(cfg, batch_size=p.max_batch).total <= 40 * GiB
    assert planner.plan(cfg, batch_size=p.max_batch + 1).total > 40 * GiB
    with pytest.raises(ValueError, match=rf"largest rollout batch that fits is {p.max_batch}"):
        planner.check_fits(cfg)
    # a phase with its own batch size is named with its own knob
    cfg.rollout.batch_size, cfg.eval.batch_size = p.max_batch, 512
    with pytest.raises(ValueError, match=r"eval does not fit: lower `eval.batch_size`"):
        planner.check_fits(cfg)


def test_fit_check_is_skipped_without_a_memory_size(tiny_pair):
    cfg = tiny_run_config(tiny_pair)
    assert jax.devices()[0].memory_stats() is None  # the CPU client reports no limit
    assert planner.check_fits(cfg) is None
    cfg.hbm_bytes_per_device = -1  # explicit opt-out
    assert planner.check_fits(cfg) is None
    cfg.hbm_bytes_per_device = 1 * GiB
    p = planner.check_fits(cfg)
    assert p.fits and p.max_batch >= cfg.rollout.batch_size
    assembly.validate_config(cfg)


def test_context_setup_has_no_teacher_copy_and_a_longer_teacher_view(tmp_path):
    cfg = _preset_config(tmp_path, "qwen3_4b", "qwen3_30b_a3b", 80)
    cfg.setup, cfg.teacher.path, cfg.data.context = "context", "", "fewshot"
    p = planner.plan(cfg)
    assert p.items["teacher params"] == 0
    assert p.buckets.teacher_prompt == 4096 and p.buckets.prompt == 512
    # teacher seeding adds the teacher's seed cache to the rollout
    cfg.method = "teacher_seeded"
    assert "teacher seed KV cache" in planner.plan(cfg).items


def test_plan_cli_with_presets():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "cliffdistill.memplan", "--config", "configs/base.py",
         "--student_preset", "qwen3_4b", "--teacher_preset", "qwen3_30b_a3b", "--hbm_gib", "140",
         "--config.mesh.tensor=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "student params" in out.stdout and "largest rollout batch that fits" in out.stdout
    assert "-> fits" in out.stdout


# ----------------------------------------------------------------------------- cost accounting

PHASES = ("time/rollout", "time/score", "time/update")


def test_cost_accounting(tiny_pair, tmp_path):
    """Every step's record has the token counts, phase times and FLOPs; the phases (+ eval and
    checkpoint) account for the step's time; the steps account for the loop's wall time; and
    status.json prices the run at wall time x devices x the configured rate."""
    cfg = tiny_run_config(tiny_pair, "mixture", steps=4)
    cfg.eval.every, cfg.checkpoint.every = 2, 3
    cfg.cost.usd_per_device_hour = 2.5
    cfg.mesh.update(data=2)
    ends = []
    t0 = time.time()
    loop.run(cfg, tmp_path / "r", progress=False, step_hook=lambda step, m: ends.append(time.time()))
    t_return = time.time()
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    for r in records:
        for k in PHASES + ("time/step", "tokens/sampled", "tokens/scored", "tokens/trained", "flops"):
            assert k in r and r[k] >= 0, (k, r)
        assert ("time/eval" in r) == ((r["step"] + 1) % 2 == 0), r
        assert ("time/checkpoint" in r) == (r["step"] + 1 in (3, 4)), r
        assert r["tokens/sampled"] > 0 and r["tokens/scored"] > r["tokens/sampled"]
        assert r["tokens/trained"] > 0 and r["flops"] > 0
        # The phases (+ eval, checkpoint) are timed inside the step: they never exceed it, and
        # the rest is host work (batch assembly, host copies for metrics, the replay buffer):
        # a few ms per step whatever the model size. So: >= 80% of the step, or (for these
        # ~20 ms toy steps) at most 50 ms of host work.
        timed = sum(r.get(k, 0.0) for k in PHASES + ("time/eval", "time/checkpoint"))
        assert timed <= r["time/step"] + 1e-6
        assert timed >= 0.8 * r["time/step"] or r["time/step"] - timed < 0.05, r
    # no wall time between steps escapes time/step
    loop_seconds = ends[-1] - (ends[0] - records[0]["time/step"])
    assert sum(r["time/step"] for r in records) == pytest.approx(loop_seconds, rel=0.02, abs=0.05)
    # wall = setup (+ step-0 eval) + the steps + closing; nothing is counted twice
    setup = ends[0] - records[0]["time/step"] - t0
    assert status["wall_seconds"] == pytest.approx(setup + loop_seconds, rel=0.02, abs=0.1)
    assert status["wall_seconds"] <= t_return - t0
    hours = status["wall_seconds"] * 2 / 3600  # 2 devices in the mesh
    assert status["cost"]["device_hours"] == pytest.approx(hours)
    assert status["cost"]["usd"] == pytest.approx(hours * 2.5)


def test_cost_adds_up_over_preemption_and_resume(tiny_pair, tmp_path):
    """A preempted run records its wall time and cost; the resumed run's status.json prices
    both segments (the report sums status.json costs, so a resume must not drop the first)."""
    import signal

    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", steps=4)
    cfg.cost.usd_per_device_hour = 1.0

    def preempt(step, _):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(loop.Preempted):
        loop.run(cfg, tmp_path / "r", step_hook=preempt, progress=False)
    first = json.loads((tmp_path / "r" / "status.json").read_text())
    assert first["state"] == "preempted" and first["wall_seconds"] > 0
    assert first["cost"]["device_hours"] == pytest.approx(first["wall_seconds"] / 3600)
    t0 = time.time()
    loop.run(cfg, tmp_path / "r", progress=False)
    second = time.time() - t0
    final = json.loads((tmp_path / "r" / "status.json").read_text())
    assert final["state"] == "done"
    assert first["wall_seconds"] < final["wall_seconds"] <= first["wall_seconds"] + second
    assert final["wall_seconds"] == pytest.approx(first["wall_seconds"] + second, abs=0.5)
    assert final["cost"]["usd"] == pytest.approx(final["wall_seconds"] / 3600)
