"""Runs an experiment config into a workdir.

    python -m launch.run --config=configs/toyworld.py --workdir=runs/demo
"""

from absl import app, flags, logging
from ml_collections import config_flags

from mrepe_jax import parallel
from mrepe_jax.experiments import toyworld

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results and reports.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100, "Multi-host: seconds after which a silent process counts as dead "
    "and the others stop.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # orbax logs every checkpoint step at INFO; the progress bar already says where training is.
    logging.set_verbosity(logging.WARNING)
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                    _HEARTBEAT.value)
    with parallel.fail_fast():
        results = toyworld.run(_CONFIG.value, _WORKDIR.value)
    print(f"wrote {_WORKDIR.value}/results.json and {_WORKDIR.value}/report.md")
    print("zero-shot accuracy:", results["zero_shot"])


if __name__ == "__main__":
    app.run(main)
