"""The tree's layout holds: ruff passes, the layer order of pyproject's import contracts holds (and
its checker fails on an injected violation, naming the import), and no file name repeats its
package's name."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the contracts' root packages and pyproject name: everything the checker reads.
TREE = ("mrepe_jax", "launch", "configs", "bench", "pyproject.toml")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    # PYTHONPATH: the root packages of `cwd` shadow the installed (editable) mrepe_jax.
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)}, timeout=120)


def test_ruff_passes():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_layer_contracts_hold():
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.fixture
def copy_of_tree(tmp_path):
    for name in TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("importer, imported, contract", [
    # Upward: a shared model layer reaching into a stage.
    ("mrepe_jax/models/layers.py", "mrepe_jax.stages.seeds", "mrepe_jax imports only downward"),
    # Sideways: one experiment reading another's module.
    ("mrepe_jax/experiments/clip/data.py", "mrepe_jax.experiments.toyworld.seeds",
     "No experiment imports another"),
    # A shared model module building on a family.
    ("mrepe_jax/models/attention.py", "mrepe_jax.models.clip.config",
     "Model families build on what models/ shares"),
])
def test_the_checker_names_an_injected_violation(copy_of_tree, importer, imported, contract):
    assert _lint_imports(copy_of_tree).returncode == 0
    path = copy_of_tree / importer
    path.write_text(path.read_text() + f"\nimport {imported}  # injected\n")
    proc = _lint_imports(copy_of_tree)
    assert proc.returncode != 0
    module = importer.removesuffix(".py").replace("/", ".")
    assert f"{module} -> {imported}" in proc.stdout, proc.stdout
    broken = proc.stdout.split("Broken contracts", 1)[1]
    assert contract in broken, proc.stdout


def test_no_file_name_repeats_its_package():
    """``toyworld_image.py`` beside (or inside) a ``toyworld/`` package says a package is missing."""
    bad = []
    for path in (ROOT / "mrepe_jax").rglob("*.py"):
        folders = {path.parent.name} | {p.name for p in path.parent.iterdir() if p.is_dir()}
        bad += [str(path.relative_to(ROOT)) for f in folders if path.stem.startswith(f + "_")]
    assert not bad, f"file names that repeat a package's name: {bad}"
