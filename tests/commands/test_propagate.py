"""``vitalstats propagate`` through cli.main, output captured."""

import itertools
import json
import math
import re

import pytest

from vitalstats.cli import main


def _json(capsys, *argv):
    assert main(["propagate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_prints_a_table_with_one_row_per_layer(capsys):
    assert main(["propagate", "--depth", "3", "--width", "32", "--batch", "16"]) == 0
    out = capsys.readouterr().out
    for text in (
        "3 x Linear(32->32) + tanh, init default, batch 16",
        "theory",
        "grad std",
        "(input)",
        "Tanh",
        "variance x",
    ):
        assert text in out
    rows = [
        line.split()[:2] for line in out.splitlines() if re.match(r"\s*\d+\s+(Linear|Tanh)\s", line)
    ]
    assert rows == [
        ["0", "Linear"],
        ["1", "Tanh"],
        ["2", "Linear"],
        ["3", "Tanh"],
        ["4", "Linear"],
        ["5", "Tanh"],
    ]


def test_json_has_every_layer(capsys):
    data = _json(
        capsys,
        "--depth",
        "2",
        "--width",
        "16",
        "--batch",
        "8",
        "--activation",
        "relu",
        "--batch-norm",
        "--init",
        "kaiming",
    )
    assert [layer["type"] for layer in data["layers"]] == ["Linear", "BatchNorm1d", "ReLU"] * 2
    assert all(
        layer["zero_fraction"] is not None for layer in data["layers"] if layer["type"] == "ReLU"
    )


def test_seed_004_unscaled_weights_give_variance_about_512(capsys):
    data = _json(
        capsys, "--depth", "1", "--width", "512", "--activation", "linear", "--init", "normal"
    )
    assert data["layers"][0]["std"] ** 2 == pytest.approx(512, rel=0.1)


def test_seed_004_scaled_weights_give_variance_about_one(capsys):
    data = _json(
        capsys, "--depth", "1", "--width", "512", "--activation", "linear", "--init", "kaiming"
    )
    assert data["layers"][0]["std"] ** 2 == pytest.approx(1, rel=0.1)


def test_seed_001_one_10_to_200_layer_triples_the_std(capsys):
    data = _json(
        capsys,
        "--depth",
        "1",
        "--in-features",
        "10",
        "--width",
        "200",
        "--activation",
        "linear",
        "--init",
        "normal",
    )
    assert data["layers"][0]["fan_in"] == 10 and data["layers"][0]["fan_out"] == 200
    assert data["layers"][0]["std"] / data["input"]["std"] == pytest.approx(math.sqrt(10), rel=0.1)


def test_default_linear_init_shrinks_variance_about_three_fold_per_layer(capsys):
    data = _json(
        capsys,
        "--depth",
        "6",
        "--width",
        "256",
        "--activation",
        "linear",
        "--init",
        "default",
        "--no-bias",
    )
    stds = [data["input"]["std"]] + [layer["std"] for layer in data["layers"]]
    for before, after in itertools.pairwise(stds):
        assert (after / before) ** 2 == pytest.approx(1 / 3, rel=0.1)


def test_lsuv_gives_unit_std_linear_outputs(capsys):
    data = _json(capsys, "--depth", "4", "--width", "64", "--init", "lsuv", "--activation", "relu")
    for layer in data["layers"]:
        if layer["type"] == "Linear":
            assert layer["std"] == pytest.approx(1.0, abs=0.06)


def test_same_seed_same_numbers(capsys):
    first = _json(capsys, "--depth", "2", "--width", "16", "--seed", "3")
    assert first == _json(capsys, "--depth", "2", "--width", "16", "--seed", "3")
    assert first != _json(capsys, "--depth", "2", "--width", "16", "--seed", "4")


def test_plot_writes_a_png(tmp_path, capsys):
    out = tmp_path / "std.png"
    assert main(["propagate", "--depth", "2", "--width", "16", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {out}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--depth", "0"], "--depth must be >= 1; got 0"),
        (["--in-features", "-2"], "--in-features must be >= 1"),
        (["--batch-norm", "--batch", "1"], "--batch-norm needs --batch >= 2"),
        (["--depth", "100", "--width", "4096"], "weights is over"),
        (["--plot", "/nonexistent/dir/x.png"], "folder /nonexistent/dir does not exist"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(["propagate", *argv]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("vitalstats propagate: error: ") and message in err and err.count("\n") == 1
    )


def test_help_shows_the_seed_examples(capsys):
    with pytest.raises(SystemExit):
        main(["propagate", "--help"])
    out = capsys.readouterr().out
    assert "seed 004" in out and "seed 001" in out and "--batch-norm" in out


def test_cli_choices_match_what_build_mlp_accepts():
    from vitalstats.commands import propagate as command
    from vitalstats.init import mlp

    assert tuple(mlp.ACTIVATIONS) == command.ACTIVATION_CHOICES
    assert command.INIT_CHOICES == mlp.MLP_INITS


def test_registering_the_command_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import argparse, sys; from vitalstats.commands import propagate; "
        "propagate.register(argparse.ArgumentParser().add_subparsers()); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
