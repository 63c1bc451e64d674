"""Runs the experiment a config names into a workdir.

    python -m launch.run --config=configs/toyworld.py --workdir=runs/demo
    python -m launch.run --config=configs/clip.py --config.model.name=openai/clip-vit-base-patch32 \
        --workdir=runs/clip-b32

Each config sets ``experiment`` to a key of ``EXPERIMENTS``; that module's ``run(config, workdir)``
does the work and its ``summary(results)`` is what this prints at the end. ``--compile_cache=DIR``
keeps compiled programs across runs (``mrepe_jax.compile_cache``); ``make demo`` passes one.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from mrepe_jax import compile_cache, parallel
from mrepe_jax.experiments import clip, toyworld

#: The experiments a config can name (``config.experiment``).
EXPERIMENTS = {"toyworld": toyworld, "clip": clip}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results and reports.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100, "Multi-host: seconds after which a silent process counts as dead "
    "and the others stop.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", None, "Directory of JAX's persistent compilation cache: programs compiled by an "
    "earlier run (any workdir) are read back instead of compiled again. Unset: no cache.")
flags.mark_flags_as_required(["config", "workdir"])


def experiment_of(config):
    """The module of the experiment ``config`` names, or an error listing the known ones."""
    name = config.get("experiment")
    if name not in EXPERIMENTS:
        what = "names no experiment (set `experiment`)" if name is None else f"names experiment {name!r}"
        raise app.UsageError(f"the config {what}; known experiments: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    experiment = experiment_of(_CONFIG.value)
    # orbax logs every checkpoint step at INFO; the progress bars already say where a run is.
    logging.set_verbosity(logging.WARNING)
    if _COMPILE_CACHE.value:
        compile_cache.enable(_COMPILE_CACHE.value)
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                    _HEARTBEAT.value)
    with parallel.fail_fast():
        results = experiment.run(_CONFIG.value, _WORKDIR.value)
    print(experiment.summary(results, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main)
