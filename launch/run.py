"""Runs an experiment config into a workdir.

    python -m launch.run --config=configs/toyworld.py --workdir=runs/demo
"""

from absl import app, flags
from ml_collections import config_flags

from mrepe_jax.experiments import toyworld

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = toyworld.run(_CONFIG.value, _WORKDIR.value)
    print(f"wrote {_WORKDIR.value}/results.json and {_WORKDIR.value}/report.md")
    print("zero-shot accuracy:", results["zero_shot"])


if __name__ == "__main__":
    app.run(main)
