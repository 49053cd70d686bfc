"""``python -m mdiff COMMAND [ARGS]``: the console scripts as one module, for launchers that
take a module rather than a script (``torchrun --nproc-per-node 2 -m mdiff train DATA.tif``).
"""
import sys

from . import cli

COMMANDS = {"train": cli.train_main, "sample": cli.sample_main,
            "distill": cli.distill_main, "metrics": cli.metrics_main,
            "evaluate": cli.evaluate_main,
            "synth": cli.synth_main, "demo": cli.demo_main}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    usage = f"usage: python -m mdiff {{{','.join(COMMANDS)}}} [ARGS]  (each has --help)"
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(usage, file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
