"""Runs the experiment a config names into a workdir.

    python -m launch.run --config=configs/toyworld.py --workdir=runs/demo
    python -m launch.run --config=configs/clip.py --config.model.name=openai/clip-vit-base-patch32 \
        --workdir=runs/clip-b32

Each config sets ``experiment`` to a key of ``EXPERIMENTS``; that module's ``run(config, workdir)``
does the work and its ``summary(results)`` is what this prints at the end. ``--compile_cache=DIR``
keeps compiled programs across runs (``mrepe_jax.compile_cache``); ``make demo`` passes one.

A problem with the command, the config, the model or the data (the library's ``ValueError``s,
missing files, non-finite values) ends the run with one ``error:`` line naming it and exit status
1; ``--traceback`` shows where it came from. Anything else is a bug and keeps its traceback.
Ctrl-C says how to resume. A workdir the run created and left empty is removed.
"""

import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from mrepe_jax import compile_cache, parallel
from mrepe_jax.experiments import blip2, clap, clip, toyworld

#: The experiments a config can name (``config.experiment``).
EXPERIMENTS = {"toyworld": toyworld, "clip": clip, "blip2": blip2, "clap": clap}

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
_PROGRESS = flags.DEFINE_bool(
    "progress", None, "Progress bars on stderr. Default: on when stderr is a terminal, off when it is "
    "redirected to a log.")
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "On an error in the config, model or data, show the whole traceback, not "
    "only the message.")
flags.mark_flags_as_required(["config", "workdir"])

#: What a user can cause and mend (bad settings, files, data): one message, no traceback.
USER_ERRORS = (ValueError, OSError, NotImplementedError, FloatingPointError)


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
    workdir = Path(_WORKDIR.value)
    existed = workdir.exists()
    progress = sys.stderr.isatty() if _PROGRESS.value is None else _PROGRESS.value
    try:
        parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                        _HEARTBEAT.value)
        with parallel.fail_fast():
            results = experiment.run(_CONFIG.value, _WORKDIR.value, progress=progress)
    except KeyboardInterrupt:
        _drop_if_empty(workdir, existed)
        print(f"\ninterrupted: run the same command again to resume from what {workdir} holds",
              file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as e:
        _drop_if_empty(workdir, existed)
        if _TRACEBACK.value:
            raise
        print(f"error: {e}\n(--traceback shows where it came from)", file=sys.stderr)
        sys.exit(1)
    print(experiment.summary(results, _WORKDIR.value))


def _drop_if_empty(workdir: Path, existed: bool) -> None:
    """Removes a workdir this run created and wrote nothing to."""
    if not existed and workdir.is_dir() and not any(workdir.iterdir()):
        try:
            os.rmdir(workdir)
        except OSError:  # another process of the run removed it, or wrote into it, first
            pass


def parse_flags(argv):
    """absl's flag parsing, with a config override that names no field (``--config.model.dtyp``)
    reported as one line with ml_collections' suggestion instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}\n(--helpfull lists the flags)", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        field, message = _override_error(e)
        override = next((a for a in argv[1:] if a.startswith("--config.") and field
                         and field in a.split("=", 1)[0].split(".")), "the --config flags")
        print(f"error: {override}: {message}", file=sys.stderr)
        sys.exit(2)


def _override_error(error: BaseException) -> tuple[str | None, str]:
    """``(the field a config override names, one line saying what is wrong)`` from the chain of
    exceptions ml_collections raises (a KeyError with a did-you-mean, re-raised as an
    AttributeError that quotes it again)."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__context__
    texts = [e.args[0] if e.args and isinstance(e.args[0], str) else str(e) for e in reversed(chain)]
    hint = next((t for t in texts if "Did you mean" in t), None)
    if hint is None:
        return None, " ".join(texts[-1].split())
    field, _, rest = hint.partition("\n")
    field = field.strip("'\"")
    return field, f"the config has no field {field!r}. {rest.strip()}"


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
