"""``rankserve train`` and ``export`` at the command line: help without the ``train`` extra,
the extra named when it is missing, and project errors as one line with a non-zero exit."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from serving.train import command, export_command

PROJECT = Path(__file__).resolve().parents[2]
# Run as if only `make serve` had installed: the train extra's packages cannot be imported.
WITHOUT_EXTRA = ("import sys\n"
                 "for name in ('torch', 'pandas', 'scipy', 'sklearn', 'tqdm'):\n"
                 "    sys.modules[name] = None  # import raises ImportError\n"
                 "from serving.cli import main\n"
                 "sys.exit(main(sys.argv[1:]))\n")


def without_extra(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRA, *args], capture_output=True,
                          text=True, cwd=PROJECT, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def rankserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], capture_output=True,
                          text=True, cwd=PROJECT, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def test_train_help_works_without_the_extra_and_shows_every_default() -> None:
    result = without_extra("train", "--help")
    assert result.returncode == 0, result.stderr
    assert re.search(r"--epochs EPOCHS\s+passes over the training days \(default: 2\)",
                     result.stdout)


def test_every_train_and_export_option_has_help_with_its_default() -> None:
    for module in (command, export_command):
        parser = argparse.ArgumentParser()
        module.configure(parser)
        options = [a for a in parser._actions if a.dest != "help"]
        assert len(options) >= 8
        for action in options:
            assert "default" in (action.help or ""), action.dest


def test_export_help_works_without_the_extra() -> None:
    result = without_extra("export", "--help")
    assert result.returncode == 0, result.stderr
    assert "--force" in result.stdout
    assert "one more than the highest there" in result.stdout


def test_running_without_the_extra_names_it_in_one_line() -> None:
    for name in ("train", "export"):
        result = without_extra(name)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert f"rankserve {name}: needs the 'train' extra" in lines[0]
        assert "pip install 'rankserve[train]'" in lines[0]


def test_export_checks_the_checkpoint_before_loading_the_data(tmp_path: Path) -> None:
    result = rankserve("export", "--run-dir", str(tmp_path / "no-run"),
                       "--data", str(tmp_path / "no-data"),
                       "--model-repository", str(tmp_path / "repo"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"rankserve export: no checkpoint at {tmp_path / 'no-run' / 'checkpoint.pt'}: run "
        "`rankserve train` first (or pass --run-dir)"]
    assert not (tmp_path / "repo").exists()


def test_train_reports_missing_data_in_one_line(tmp_path: Path) -> None:
    result = rankserve("train", "--data", str(tmp_path), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"rankserve train: data of schema kuairand not found in {tmp_path}")


def test_a_bad_task_wide_l2_is_one_line_naming_it(tmp_path: Path) -> None:
    """Checked before the data is read: a malformed pair, or a task the schema lacks."""
    for value, message in (("like", "--task-wide-l2 'like': expected TASK=L2"),
                           ("likes=1e-5", "--task-wide-l2 names tasks kuairand lacks: likes")):
        result = rankserve("train", "--data", str(tmp_path), "--run-dir", str(tmp_path / "run"),
                           "--task-wide-l2", value)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"rankserve train: {message}"), lines[0]
