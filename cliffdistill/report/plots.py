"""The report's plots (matplotlib, imported only when plots are drawn)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from cliffdistill.run import rundir
from cliffdistill.report.aggregate import BASELINE_TITLES, CORRECT, PLOTS_DIR, method_rank
from cliffdistill.report.markdown import label, main_groups, setup_groups, student_step0
from cliffdistill.stats import finite, pct


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (sweeps run on headless hosts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _method_color(method: str) -> Any:
    import matplotlib

    rank, _ = method_rank(method)
    cmap = matplotlib.colormaps["tab10"]
    if rank < 8:
        return cmap(rank)
    return cmap(8 + sum(method.encode()) % 2)  # stable across processes (str hash() is salted)


def _baseline_lines(ax: Any, agg: Mapping, setup: str, scale: float = 100.0) -> None:
    styles = {
        "student": ("black", (0, (5, 3))),
        "teacher": ("tab:gray", (0, (2, 2))),
        "teacher_with_context": ("tab:brown", (0, (6, 2, 1, 2))),
    }
    base = agg["baselines"].get(setup) or {}
    s0, src = student_step0(agg, setup)
    values = {"student": s0} if s0 is not None else {}
    for role in ("teacher", "teacher_with_context"):
        if base.get(role):
            values[role] = base[role]["accuracy"]
    for role, title in BASELINE_TITLES.items():
        if role in values:
            color, dash = styles[role]
            ax.axhline(
                values[role] * scale,
                color=color,
                linestyle=dash,
                linewidth=1.3,
                label=f"{title}: {pct(values[role])}%",
            )


def _array(xs: Sequence[Any]) -> Any:
    import numpy as np

    return np.array([x if finite(x) else np.nan for x in xs], dtype=float)


def _plot_curve(
    ax: Any,
    curve: Mapping,
    color: Any,
    label: str,
    scale: float,
    clip: Optional[tuple[float, float]],
    marker: str,
) -> None:
    import numpy as np

    steps = np.array(curve["steps"], dtype=float)
    mean, low, high = (_array(curve[k]) * scale for k in ("mean", "ci_low", "ci_high"))
    if clip is not None:
        low, high = np.clip(low, *clip), np.clip(high, *clip)
    ax.plot(steps, mean, color=color, label=label, linewidth=1.8, marker=marker, markersize=3.5)
    band = np.isfinite(low) & np.isfinite(high)
    if band.any():
        ax.fill_between(steps, low, high, where=band, color=color, alpha=0.18, linewidth=0, interpolate=True)


def _save(fig: Any, path: Path, dpi: int) -> None:
    """PNG without a version stamp (byte-stable), written via temp file + rename, figure closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    tmp.replace(path)
    pyplot().close(fig)


def _integer_steps(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _finish(fig: Any, ax: Any, path: Path) -> None:
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    _save(fig, path, dpi=110)


def plot_accuracy(agg: Mapping, setup: str, path: Path) -> None:
    """Held-out accuracy vs step, one line per method (mean over seeds, 95% t-CI band) + baselines."""
    plt = pyplot()
    groups = main_groups(setup_groups(agg, setup))
    fig, ax = plt.subplots(figsize=(9, 5))
    top = 0.0
    for g in groups:
        curve = g["curves"]["accuracy"]
        if not curve["steps"]:
            continue
        _plot_curve(
            ax, curve, _method_color(g["method"]), f"{label(g)} (n={g['n_done']})", 100.0, (0.0, 100.0), "o"
        )
        top = max(top, max((v for v in curve["ci_high"] + curve["mean"] if finite(v)), default=0.0))
    _baseline_lines(ax, agg, setup)
    for line in ax.get_lines():
        top = max(top, float(max(line.get_ydata(), default=0.0)) / 100.0)
    ax.set_ylim(0.0, min(100.0, top * 100.0 * 1.1 + 5.0))
    ax.set_xlabel("training step")
    _integer_steps(ax)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(
        f"{setup}: held-out accuracy (mean over seeds, 95% t-CI band; dashed = baselines)", fontsize=10
    )
    _finish(fig, ax, path)


def plot_teacher_score(agg: Mapping, setup: str, path: Path) -> bool:
    """Teacher score (mean teacher log-prob per student token) vs step per method; False if none logged."""
    plt = pyplot()
    groups = [g for g in main_groups(setup_groups(agg, setup)) if g["curves"]["teacher_score"]["steps"]]
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(9, 5))
    for g in groups:
        _plot_curve(
            ax,
            g["curves"]["teacher_score"],
            _method_color(g["method"]),
            f"{label(g)} (n={g['n_done']})",
            1.0,
            None,
            "",
        )
    ax.set_xlabel("training step")
    _integer_steps(ax)
    ax.set_ylabel("teacher score (mean teacher log-prob / token)")
    ax.set_title(f"{setup}: teacher score of student samples (mean over seeds, 95% t-CI band)", fontsize=10)
    _finish(fig, ax, path)
    return True


def plot_bars(agg: Mapping, setup: str, path: Path) -> None:
    """Final accuracy per method (variants side by side) with t-CI error bars and per-seed dots."""
    import numpy as np

    plt = pyplot()
    groups = setup_groups(agg, setup)
    methods = sorted({g["method"] for g in groups}, key=method_rank)
    variants = sorted({g["variant"] for g in groups}, key=lambda v: (v != CORRECT, v))
    index = {(g["method"], g["variant"]): g for g in groups}
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(methods) * max(1, len(variants)) ** 0.5 + 3), 5))
    vcolors = plt.get_cmap("Set2")
    labelled: set[str] = set()
    for i, m in enumerate(methods):
        present = [v for v in variants if (m, v) in index and finite(index[(m, v)]["final_mean"])]
        for k, v in enumerate(present):  # the bars of one method are centred on its tick
            g = index[(m, v)]
            x = i + (k - (len(present) - 1) / 2.0) * width
            color = _method_color(m) if len(variants) == 1 else vcolors(variants.index(v) % 8)
            mean = 100.0 * g["final_mean"]
            yerr, top = None, mean
            if finite(g["final_ci_low"]) and finite(g["final_ci_high"]):
                lo = max(0.0, 100.0 * g["final_ci_low"])
                hi = min(100.0, 100.0 * g["final_ci_high"])
                yerr, top = np.array([[max(0.0, mean - lo)], [max(0.0, hi - mean)]]), max(mean, hi)
            label = v if len(variants) > 1 and v not in labelled else None
            labelled.add(v)
            ax.bar(
                x,
                mean,
                width * 0.9,
                color=color,
                edgecolor="black",
                linewidth=0.5,
                yerr=yerr,
                capsize=3,
                label=label,
            )
            seeds = g["final_per_seed"]
            if seeds:
                offsets = np.linspace(-0.25, 0.25, len(seeds)) * width if len(seeds) > 1 else np.zeros(1)
                ax.scatter(x + offsets, [100.0 * s for s in seeds], s=9, color="black", zorder=3)
                top = max(top, 100.0 * max(seeds))
            ax.text(x, top + 1.0, f"{mean:.1f}", ha="center", va="bottom", fontsize=7)
    _baseline_lines(ax, agg, setup)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0.0, 108.0)
    ax.set_ylabel("final held-out accuracy (%)")
    ax.set_title(f"{setup}: final accuracy (mean over seeds, 95% t-CI; dots = seeds)", fontsize=10)
    _finish(fig, ax, path)


def plot_ablation_curves(agg: Mapping, setup: str, path: Path) -> bool:
    """Accuracy vs step per variant, one panel per method that ran ablations; False if none did."""
    plt = pyplot()
    groups = setup_groups(agg, setup)
    methods = [
        m
        for m in sorted({g["method"] for g in groups}, key=method_rank)
        if len({g["variant"] for g in groups if g["method"] == m}) > 1
    ]
    if not methods:
        return False
    ncols = min(4, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols + 2, 3.2 * nrows), squeeze=False, sharey=True)
    variants = sorted({g["variant"] for g in groups}, key=lambda v: (v != CORRECT, v))
    vcolors = plt.get_cmap("Set2")
    for k, m in enumerate(methods):
        ax = axes[k // ncols][k % ncols]
        for j, v in enumerate(variants):
            g = next((g for g in groups if g["method"] == m and g["variant"] == v), None)
            if g and g["curves"]["accuracy"]["steps"]:
                _plot_curve(ax, g["curves"]["accuracy"], vcolors(j % 8), v, 100.0, (0.0, 100.0), "o")
        _baseline_lines(ax, agg, setup)
        ax.set_title(m, fontsize=9)
        _integer_steps(ax)
        ax.set_ylim(0.0, 100.0)
        ax.grid(True, alpha=0.3)
    for k in range(len(methods), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8, frameon=False)
    fig.suptitle(f"{setup}: accuracy vs step, correct vs study defects", fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=100)
    return True


# (curve key, y label, scale) of the switch-aligned panels: held-out accuracy, then the
# per-step rollout diagnostics of metrics.jsonl (aggregate.STEP_SERIES).
_ALIGNED_PANELS = (("accuracy", "held-out accuracy (%)", 100.0),
                   ("entropy", "entropy (nats / token)", 1.0),
                   ("reverse_kl", "sampled reverse KL / token", 1.0),
                   ("teacher_score", "teacher log-prob / token", 1.0),
                   ("truncation_rate", "truncated rollouts (%)", 100.0),
                   ("repetition_rate", "repetitive rollouts (%)", 100.0))


def plot_switch_aligned(agg: Mapping, setup: str, path: Path) -> bool:
    """Six panels (accuracy, entropy, reverse KL, teacher score, truncation, repetition) vs
    step - switch step, one line per method (correct implementation, mean over seeds): what
    happens to the rollouts when a method changes phase. False when nothing was logged."""
    groups = main_groups(setup_groups(agg, setup))
    if not any(g["curves"][key]["steps"] for g in groups for key, _, _ in _ALIGNED_PANELS):
        return False
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
    for ax, (key, ylabel, scale) in zip(axes.flat, _ALIGNED_PANELS):
        for g in groups:
            curve = g["curves"][key]
            if not curve["steps"]:
                continue
            shift = g.get("switch_step") or 0
            xs = [s - shift for s in curve["steps"]]
            ys = [v * scale if finite(v) else float("nan") for v in curve["mean"]]
            ax.plot(xs, ys, color=_method_color(g["method"]), linewidth=1.3,
                    marker="o" if key == "accuracy" else "", markersize=3,
                    label=f"{label(g)} (switch {shift})" if shift else label(g))
        ax.axvline(0.0, color="black", linewidth=0.8, alpha=0.5)
        ax.set_xlabel("step - switch step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8,
               frameon=False)
    fig.suptitle(f"{setup}: curves aligned on each method's switch point (correct "
                 "implementation, mean over seeds; methods without a switch start at 0)", fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=100)
    return True


def write_plots(agg: Mapping, sweep_dir: Path) -> dict[str, list[str]]:
    """All plots; returns ``{setup: [relative paths]}`` for the report."""
    out: dict[str, list[str]] = {}
    for setup in agg["setups"]:
        if not setup_groups(agg, setup):
            continue
        s = rundir.safe_name(setup)
        rels = [f"{PLOTS_DIR}/accuracy_{s}.png"]
        plot_accuracy(agg, setup, sweep_dir / rels[0])
        if plot_teacher_score(agg, setup, sweep_dir / PLOTS_DIR / f"teacher_score_{s}.png"):
            rels.append(f"{PLOTS_DIR}/teacher_score_{s}.png")
        rels.append(f"{PLOTS_DIR}/bars_{s}.png")
        plot_bars(agg, setup, sweep_dir / rels[-1])
        if plot_switch_aligned(agg, setup, sweep_dir / PLOTS_DIR / f"aligned_{s}.png"):
            rels.append(f"{PLOTS_DIR}/aligned_{s}.png")
        if plot_ablation_curves(agg, setup, sweep_dir / PLOTS_DIR / f"accuracy_{s}_ablations.png"):
            rels.append(f"{PLOTS_DIR}/accuracy_{s}_ablations.png")
        out[setup] = rels
    return out
