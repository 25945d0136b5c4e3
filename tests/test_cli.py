"""The command line as a user meets it: help with examples, one-line errors, exit codes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from tests.report.synthetic import make_store
from vitalstats.cli import build_parser, main
from vitalstats.commands import COMMAND_MODULES

MY_COMMANDS = ("doctor", "report", "watch", "runs", "lint", "export")


def _cli(*arguments: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vitalstats", *arguments], capture_output=True, text=True, cwd=cwd,
        timeout=120,
    )  # fmt: skip


def test_every_command_is_registered_in_help_order():
    assert set(MY_COMMANDS) <= set(COMMAND_MODULES)
    help_text = build_parser().format_help()
    for command in MY_COMMANDS:
        assert command in help_text


@pytest.mark.parametrize("command", MY_COMMANDS)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: vitalstats {command}" in out
    assert "examples:" in out
    assert f"vitalstats {command}" in out.split("examples:", 1)[1]


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: vitalstats" in capsys.readouterr().out


def _one_line_error(result: subprocess.CompletedProcess, command: str, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in result.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"vitalstats {command}: error: ")
    for fragment in fragments:
        assert fragment in err


@pytest.mark.parametrize("command", ["report", "watch", "runs", "export"])
def test_missing_store_is_one_line(command, tmp_path):
    extra = ["--tensorboard", str(tmp_path / "tb")] if command == "export" else []
    _one_line_error(_cli(command, str(tmp_path / "nope.sqlite"), *extra), command, "no run store")


def test_non_sqlite_store_is_one_line(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("hello")
    _one_line_error(_cli("runs", str(path)), "runs", "not a SQLite file")


def test_foreign_sqlite_file_is_one_line(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (x)")
    _one_line_error(_cli("report", str(path)), "report", "not a vitalstats run store")


def test_newer_schema_store_is_one_line(tmp_path):
    path = make_store(tmp_path / "runs.sqlite", runs=1, steps=2)
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 999")
    _one_line_error(_cli("report", str(path), "-o", str(tmp_path / "r.html")), "report", "newer")


def test_unknown_run_is_one_line(tmp_path):
    path = make_store(tmp_path / "runs.sqlite", runs=1, steps=2)
    _one_line_error(
        _cli("report", str(path), "--run", "ghost", "-o", str(tmp_path / "r.html")),
        "report", "no run 'ghost'", "run-0",
    )  # fmt: skip


def test_lint_factory_that_fails_to_import_is_one_line(tmp_path):
    (tmp_path / "broken_models.py").write_text("import a_module_that_does_not_exist\n")
    _one_line_error(_cli("lint", "broken_models:build", cwd=tmp_path), "lint",
                    "cannot import 'broken_models'", "ModuleNotFoundError")  # fmt: skip


def test_version():
    result = _cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("vitalstats ")
