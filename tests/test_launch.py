"""``launch.run`` as a user meets it: one-line errors for what a user can mend (a typo in an
override, a missing checkpoint), a traceback on request, Ctrl-C that says how to resume, progress
bars that follow the terminal, and no empty workdir left behind."""

import subprocess
import sys
import types
from pathlib import Path

import pytest

from launch import run as launch_run
from tests.launching import launch_in_process

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "launch.run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_a_typo_in_an_override_is_one_line_with_the_suggestion(tmp_path):
    proc = _cli("--config=configs/clip.py", "--config.seed=1", "--config.model.dtyp=bfloat16",
                f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ('error: --config.model.dtyp=bfloat16: the config has no field '
                                   '\'dtyp\'. Did you mean "dtype" instead of "dtyp"?')


def test_a_user_error_is_one_line_and_leaves_no_workdir(tmp_path):
    work = tmp_path / "w"
    proc = _cli("--config=configs/clip.py", "--config.model.name=/no/such/clip", f"--workdir={work}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[0] == "error: checkpoint directory '/no/such/clip' does not exist"
    assert not work.exists()
    proc = _cli("--config=configs/clip.py", "--config.model.name=/no/such/clip", f"--workdir={work}",
                "--traceback")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "does not exist" in proc.stderr


@pytest.fixture
def stub(monkeypatch):
    """A stub experiment behind ``config.experiment = "clip"``: records how ``run`` was called
    and raises what the test sets."""
    calls = {}

    def run(config, workdir, progress=True):
        calls.update(workdir=workdir, progress=progress)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        if calls.get("raise"):
            raise calls["raise"]
        (Path(workdir) / "results.json").write_text("{}")
        return {}

    module = types.SimpleNamespace(run=run, summary=lambda results, workdir: "done")
    monkeypatch.setitem(launch_run.EXPERIMENTS, "clip", module)
    return calls


def _main(*args):
    launch_in_process("--config=configs/clip.py", *args)


def test_ctrl_c_says_how_to_resume(stub, tmp_path, capsys):
    stub["raise"] = KeyboardInterrupt()
    with pytest.raises(SystemExit) as exit_info:
        _main(f"--workdir={tmp_path / 'w'}")
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted: run the same command again to resume" in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()  # created by the run, left empty: removed


def test_progress_follows_the_flag_and_else_the_terminal(stub, tmp_path, capsys):
    _main(f"--workdir={tmp_path / 'a'}", "--progress")
    assert stub["progress"] is True
    _main(f"--workdir={tmp_path / 'b'}")
    assert stub["progress"] is sys.stderr.isatty()  # pytest captures stderr: not a terminal
    _main(f"--workdir={tmp_path / 'c'}", "--noprogress")
    assert stub["progress"] is False
    assert capsys.readouterr().out.count("done") == 3


def test_a_bug_keeps_its_traceback(stub, tmp_path):
    stub["raise"] = KeyError("a bug, not a user error")
    with pytest.raises(KeyError, match="a bug"):
        _main(f"--workdir={tmp_path / 'w'}")
