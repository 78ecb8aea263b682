"""python -m cliffdistill.report --workdir SWEEP_DIR [--generated_at TEXT]"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from cliffdistill.report import write_report


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    paths = write_report(flags.FLAGS.workdir, generated_at=flags.FLAGS.generated_at)
    print(paths["md"])


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Sweep directory to report on.")
    flags.DEFINE_string("generated_at", None, "Optional timestamp text to print in REPORT.md.")
    flags.mark_flag_as_required("workdir")
    app.run(main)
