"""Aggregate a sweep directory into results.json / results.csv / REPORT.md and plots.

    python -m cliffdistill.report --workdir SWEEP_DIR

Reads only run files (``runs/<name>/{config,metrics,eval,status}`` and ``baselines/<setup>.json``,
see docs/ARCHITECTURE.md) plus ``sweep.json`` for the run list, so a report can be rebuilt at any
time, on any machine, from a partially finished sweep.  Everything is grouped by
``(setup, method, variant)`` where the variant names the study defects switched on in
``config.ablation`` (``correct`` when none is).

What counts where (and why):

* **Final accuracy** of a run = its last evaluation; only runs whose status is ``done`` count
  (a crashed run's last eval is not the method's result).  Mean and 95 % Student-t CI are over
  seeds; ``n`` in the tables is the number of such seeds.
* **Status** of a run = the ``status`` its trainer recorded on the final eval, falling back to
  :func:`cliffdistill.stats.classify_status` (final vs the run's own step-0 accuracy).
* **Δ vs student** = final minus the run's own step-0 accuracy (baseline file's student when the
  run has no step-0 eval), averaged over seeds.
* **Best** = a run's best eval after step 0, averaged over seeds.
* **Cost** counts every run that left files (failed and unfinished runs spent compute too).
* **Retention** (when runs set ``eval.benchmarks``): each benchmark at step 0 and at the end,
  the change paired on the same documents, its CI over seeds (:mod:`cliffdistill.report.retention`).
* Curves average the done runs at each step; bands are 95 % t-CIs across seeds (none for 1 seed).

Output is deterministic: sorted keys, fixed float formatting, no paths of the machine, and no
timestamp unless ``generated_at`` is passed.
"""


from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from cliffdistill.report.aggregate import (CORRECT, PLOTS_DIR, REPORT_MD, RESULTS_CSV,
                                           RESULTS_JSON, aggregate, by_step,
                                           run_entries, variant_name)
from cliffdistill.report.claims import VERDICTS, study_claims
from cliffdistill.report.markdown import render_csv, render_markdown
from cliffdistill.report.plots import plot_accuracy, write_plots
from cliffdistill.report import retention
from cliffdistill.run.rundir import plain, read_jsonl, write_text

__all__ = ["CORRECT", "PLOTS_DIR", "REPORT_MD", "RESULTS_CSV", "RESULTS_JSON", "VERDICTS",
           "aggregate", "by_step", "plot_accuracy", "read_jsonl", "render_csv",
           "render_markdown", "run_entries", "study_claims", "variant_name", "write_plots",
           "write_report"]


def write_report(
    sweep_dir: str | Path, generated_at: Optional[str] = None, plots: bool = True
) -> dict[str, Path]:
    """Write results.json, results.csv, REPORT.md (and plots/*.png) into ``sweep_dir``; return their paths."""
    sweep_dir = Path(sweep_dir)
    agg = aggregate(sweep_dir)
    agg["retention"] = retention.group(retention.run_rows(sweep_dir))
    plot_paths = write_plots(agg, sweep_dir) if plots else {}
    paths = {"json": sweep_dir / RESULTS_JSON, "csv": sweep_dir / RESULTS_CSV, "md": sweep_dir / REPORT_MD}
    write_text(paths["json"], json.dumps(plain(agg, strict=True), sort_keys=True, indent=1, allow_nan=False) + "\n")
    write_text(paths["csv"], render_csv(agg))
    md = render_markdown(agg, plot_paths, generated_at)
    if agg["retention"]:
        md += "\n".join(["", "## Retention: benchmarks at step 0 and at the end", "",
                         *retention.markdown(agg["retention"]), ""]) + "\n"
    write_text(paths["md"], md)
    for rels in plot_paths.values():
        for rel in rels:
            paths[Path(rel).stem] = sweep_dir / rel
    return paths
