"""``launch.run``'s ``main`` in this process, as ``python -m launch.run ARGS`` would run it (for
tests that mock something in-process, such as TFDS, or swap an experiment)."""

import sys

from absl import flags

from launch import run as launch_run


def launch_in_process(*args: str) -> None:
    """Parses ``args`` as absl does (config_flags reads overrides from ``sys.argv``) and runs
    ``main``; the flags are reset afterwards, so the next call parses afresh."""
    argv = ["launch.run", *args]
    saved = sys.argv
    sys.argv = argv
    try:
        flags.FLAGS(argv)
        launch_run.main(argv[:1])
    finally:
        sys.argv = saved
        flags.FLAGS.unparse_flags()
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # defined per parse
            delattr(flags.FLAGS, name)
