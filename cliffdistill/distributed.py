"""How this process joins a multi-process job, and a cross-process check:

    python -m cliffdistill.distributed           # print the resolved coordinator/process ids
    python -m cliffdistill.distributed --check   # initialise and run one cross-process sum

The logic is `cliffdistill.run.distributed`; the launch scripts in launch/ use `--check` as
their smoke test.
"""

from absl import app, flags

from cliffdistill.run import distributed

_CHECK = flags.DEFINE_bool("check", False, "initialise and run one cross-process sum")


def main(argv: list[str]) -> None:
    del argv
    print(distributed.check() if _CHECK.value else distributed.resolve(), flush=True)


if __name__ == "__main__":
    app.run(main)
