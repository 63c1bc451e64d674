"""The mutation check (issue 29): apply each one-line bug of ``tests/mutation/mutants.py`` to a copy of
the package and run the tests of its module against it.

    python -m tests.mutation.harness                # every mutant
    python -m tests.mutation.harness ID [ID ...]    # some of them
    python -m tests.mutation.harness --check        # only check that every snippet matches the code

The repository's ``mrepe_jax/``, ``tests/`` (and what the tests import: ``configs/``, ``bench/``,
``launch/``, ``pyproject.toml`` for pytest's configuration) are copied once into a temporary
directory; each mutant patches one file there, runs ``python -m pytest -x -q`` with that copy as the
working directory and first on ``PYTHONPATH`` (setuptools' editable finder sits at the end of
``sys.meta_path``, so the copy is what gets imported; the harness checks ``mrepe_jax.__file__`` once),
and restores the file. Nothing is written into the real tree (no bytecode, no pytest cache).

Outcome per mutant: ``killed`` (a test failed), ``survived`` (every test passed), ``error`` (the
tests could not run: a collection or import error, no tests, or the timeout; proves nothing).
One line per mutant, a summary, and as the last line of stdout one JSON object with the counts, the
ids of the survivors and errors, and the seconds taken. Exit status 0 only when every mutant run was
killed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.mutation.mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("mrepe_jax", "tests", "configs", "bench", "launch", "pyproject.toml")
TIMEOUT_S = 300


class MutantListError(RuntimeError):
    """A mutant's snippet does not occur exactly once in its file: the list no longer fits the code."""


def check(mutants, root: Path = ROOT) -> None:
    """Every mutant's ``before`` occurs exactly once in its file and differs from ``after``, and its
    test files exist; ids are unique."""
    ids = [m.id for m in mutants]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise MutantListError(f"duplicate mutant ids: {dupes}")
    for m in mutants:
        path = root / m.path
        if not path.is_file():
            raise MutantListError(f"mutant {m.id}: no file {m.path}")
        count = path.read_text().count(m.before)
        if count != 1:
            raise MutantListError(f"mutant {m.id}: its snippet occurs {count} times in {m.path} (must be "
                                  f"exactly once; update tests/mutation/mutants.py):\n{m.before}")
        if m.before == m.after:
            raise MutantListError(f"mutant {m.id}: replacement equals the original")
        missing = [t for t in m.tests if not (root / t.split("::")[0]).is_file()]
        if missing:
            raise MutantListError(f"mutant {m.id}: test files {missing} do not exist")


def make_copy(dest: Path, root: Path = ROOT) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    return dest


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                        if p])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a patched and a restored file may share an mtime
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def imported_from(copy: Path, env) -> str:
    """Where ``import mrepe_jax`` resolves inside the copy (it must be the copy, not the install)."""
    out = subprocess.run([sys.executable, "-c", "import mrepe_jax; print(mrepe_jax.__file__)"],
                         cwd=copy, env=env, capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"importing mrepe_jax in the copy failed:\n{out.stderr}")
    return out.stdout.strip()


_COUNTS = re.compile(r"(\d+) (failed|passed|errors?|skipped|deselected)")


def _first(lines, prefix):
    return next((line for line in lines if line.startswith(prefix)), "")


def run_one(m: Mutant, copy: Path, env, timeout: float = TIMEOUT_S) -> dict:
    path = copy / m.path
    original = path.read_text()
    mutated = original.replace(m.before, m.after, 1)
    start = time.monotonic()
    try:
        compile(mutated, str(path), "exec")
    except SyntaxError as e:
        return dict(id=m.id, outcome="error", seconds=0.0, detail=f"mutated file does not compile: {e}")
    path.write_text(mutated)
    try:
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests]
        try:
            proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return dict(id=m.id, outcome="error", seconds=time.monotonic() - start,
                        detail=f"timeout after {timeout:.0f} s")
    finally:
        path.write_text(original)
    seconds = time.monotonic() - start
    lines = (proc.stdout + proc.stderr).splitlines()
    tail = lines[-1] if lines else ""
    counts = {kind.rstrip("s"): int(n) for n, kind in _COUNTS.findall(tail)}
    if proc.returncode == 0:
        outcome, detail = "survived", tail
    elif proc.returncode == 1 and counts.get("failed"):
        outcome, detail = "killed", _first(lines, "FAILED ") or tail
    elif proc.returncode == 1 and counts.get("error"):
        # A test's setup (a fixture) raised: the mutant broke what the tests build on. It still
        # counts as killed unless it is an import error, which proves nothing.
        line = _first(lines, "ERROR ") or tail
        imports = any(e in proc.stdout for e in ("ImportError", "ModuleNotFoundError", "SyntaxError"))
        outcome, detail = ("error" if imports else "killed"), line
    else:  # 2: interrupted (collection errors), 3: internal error, 4: usage, 5: no tests collected
        outcome, detail = "error", (_first(lines, "ERROR ") or tail) + f" (pytest exit {proc.returncode})"
    return dict(id=m.id, outcome=outcome, seconds=seconds, detail=detail.strip())


def run(mutants, timeout: float = TIMEOUT_S, out=sys.stdout) -> dict:
    """Runs ``mutants`` against one temporary copy of the repository; returns the summary dict."""
    check(mutants)
    start = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="mrepe_mutation_") as tmp:
        copy = make_copy(Path(tmp))
        env = environment(copy)
        where = imported_from(copy, env)
        if not Path(where).resolve().is_relative_to(copy.resolve()):
            raise RuntimeError(f"the copy imports mrepe_jax from {where}, not from {copy}: mutants would "
                               "run against the real tree")
        print(f"mutation check: {len(mutants)} mutants against a copy in {copy}", file=out, flush=True)
        width = max(len(m.id) for m in mutants)
        for m in mutants:
            r = run_one(m, copy, env, timeout)
            results.append(r)
            print(f"{r['outcome'].upper():8s} {m.id:{width}s} {r['seconds']:6.1f}s  {m.path}: {m.breaks}",
                  file=out, flush=True)
            print(f"         {r['detail']}", file=out, flush=True)
    by = {k: [r["id"] for r in results if r["outcome"] == k] for k in ("killed", "survived", "error")}
    summary = dict(mutants=len(results), killed=len(by["killed"]), survived=len(by["survived"]),
                   error=len(by["error"]), survivors=by["survived"], errors=by["error"],
                   seconds=round(time.monotonic() - start, 1))
    print(f"{summary['killed']}/{summary['mutants']} killed, {summary['survived']} survived, "
          f"{summary['error']} errors in {summary['seconds']} s", file=out, flush=True)
    print(json.dumps(summary), file=out, flush=True)
    return summary


def select(ids) -> tuple[Mutant, ...]:
    if not ids:
        return MUTANTS
    known = {m.id: m for m in MUTANTS}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise SystemExit(f"unknown mutant ids {unknown}; known: {sorted(known)}")
    return tuple(known[i] for i in ids)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="mutant ids (default: all)")
    parser.add_argument("--check", action="store_true", help="only check the snippets against the code")
    parser.add_argument("--list", action="store_true", help="list the mutants")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per mutant")
    args = parser.parse_args(argv)
    mutants = select(args.ids)
    if args.list:
        for m in mutants:
            print(f"{m.id}\t{m.path}\t{m.breaks}\t{' '.join(m.tests)}")
        return 0
    if args.check:
        check(mutants)
        print(f"{len(mutants)} mutants match the code")
        return 0
    summary = run(mutants, args.timeout)
    return 0 if summary["killed"] == summary["mutants"] else 1


if __name__ == "__main__":
    sys.exit(main())
