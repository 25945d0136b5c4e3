"""``vitalstats lint MODULE:FACTORY``: imports the factory and prints vs.lint's findings."""

from __future__ import annotations

import sys
import textwrap

import pytest

import vitalstats as vs
from vitalstats.cli import main
from vitalstats.commands.lint import load_factory

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    def keras_habits():
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, momentum=0.99), nn.ReLU())

    def healthy():
        return nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU())

    def not_a_model():
        return 42

    def explodes():
        raise RuntimeError("factory blew up")

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def models_module(tmp_path, monkeypatch):
    (tmp_path / "lint_models_for_test.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lint_models_for_test"
    sys.modules.pop("lint_models_for_test", None)


def test_findings_match_vs_lint_on_the_same_model(models_module, capsys):
    from lint_models_for_test import keras_habits

    expected = vs.lint(keras_habits())
    assert expected, "the oracle must find something for this test to mean anything"
    code = main(["lint", f"{models_module}:keras_habits"])
    out = capsys.readouterr().out
    assert f"{len(expected)} finding(s)" in out
    for finding in expected:
        assert finding.code in out
    has_error = any(f.severity == "error" for f in expected)
    assert code == (1 if has_error else 0)


def test_healthy_model_has_no_findings(models_module, capsys):
    assert vs.lint(__import__(models_module).healthy()) == []
    assert main(["lint", f"{models_module}:healthy"]) == 0
    assert "no findings" in capsys.readouterr().out


def test_input_shape_runs_the_dynamic_checks(models_module, capsys):
    # 2 rows per BatchNorm1d channel: too few values; vs.lint with the same input is the oracle.
    import torch
    from lint_models_for_test import healthy

    expected = {f.code for f in vs.lint(healthy().train(), torch.randn(2, 4))}
    assert expected, "two rows per BatchNorm channel should be flagged by vs.lint"
    main(["lint", f"{models_module}:healthy", "--input-shape", "2,4"])
    out = capsys.readouterr().out
    for code in expected:
        assert code in out


def test_file_path_factories_load(tmp_path):
    path = tmp_path / "some_models.py"
    path.write_text(MODELS)
    assert load_factory(f"{path}:healthy")().__class__.__name__ == "Sequential"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "expected MODULE:FACTORY"),
        (
            "a_module_that_does_not_exist_xyz:build",
            "cannot import 'a_module_that_does_not_exist_xyz'",
        ),
        ("lint_models_for_test:missing", "has no attribute 'missing'"),
        ("lint_models_for_test:NOT_CALLABLE", "not a callable factory"),
        ("lint_models_for_test:not_a_model", "expected a torch.nn.Module"),
        ("lint_models_for_test:explodes", "factory blew up"),
        ("missing_file.py:build", "no file missing_file.py"),
    ],
)
def test_factory_errors_are_command_errors(models_module, spec, message, capsys):
    assert main(["lint", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_input_shape_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["lint", "x:y", "--input-shape", "0,3"])
    assert ">= 1" in capsys.readouterr().err
