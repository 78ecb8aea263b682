"""State of run or sweep directories (read-only; takes no lock):

    python -m cliffdistill.status DIR... [--stale_after_s S]

One line per run: running / done / failed / preempted / stale (left `running` by a process
that died: re-run it to resume). A sweep directory lists each of its runs.
"""

import sys

from absl import app, flags

from cliffdistill.run import rundir

_STALE = flags.DEFINE_float("stale_after_s", rundir.STALE_AFTER_SECONDS,
                            "a running run with no heartbeat for this long is stale")


def main(argv: list[str]) -> int:
    dirs = argv[1:]
    if not dirs:
        raise app.UsageError("name at least one run or sweep directory")
    print("\n".join(rundir.status_lines(dirs, _STALE.value)))
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
