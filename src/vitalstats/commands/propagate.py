"""``vitalstats propagate``: build an MLP, run one forward/backward, print how the signal moves."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitalstats.commands import CommandError

EXAMPLES = """\
examples:
  vitalstats propagate --depth 10 --width 512 --activation tanh --init xavier
  vitalstats propagate --depth 20 --activation relu --init kaiming --plot relu.png
  vitalstats propagate --depth 10 --activation tanh --init lsuv --batch-norm --json

the seeds' experiments:
  vitalstats propagate --depth 1 --width 512 --activation linear --init normal
      x @ w with w ~ N(0, 1) at 512 dims: output std ~22.6, variance ~512 (seed 004)
  vitalstats propagate --depth 1 --width 512 --activation linear --init kaiming
      w scaled by 1/sqrt(512): variance ~1 (seed 004)
  vitalstats propagate --depth 1 --in-features 10 --width 200 --activation linear --init normal
      one 10 -> 200 layer of N(0, 1) weights: std ~3.2, about 3x (seed 001)
  vitalstats propagate --depth 10 --width 512 --activation linear --init default --no-bias
      torch's default nn.Linear init: variance shrinks ~3x per layer (with biases it
      levels off near 1 / (2 * 512), the variance the biases add each layer)
"""
MAX_WEIGHTS = 500_000_000  # 2 GB of float32 weights


# Spelled out here so ``vitalstats --help`` does not import torch; a test checks they match
# vitalstats.init.mlp.ACTIVATIONS and MLP_INITS.
ACTIVATION_CHOICES = ("tanh", "relu", "leaky_relu", "sigmoid", "gelu", "silu", "selu", "linear")
INIT_CHOICES = ("default", "xavier", "kaiming", "normal", "lsuv")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "propagate",
        help="show how activations and gradients propagate through an MLP at init",
        description=(
            "Builds depth x [Linear(width) -> (BatchNorm1d) -> activation], initialised by --init, "
            "feeds a N(0, 1) batch, runs a backward on a unit loss and prints, per layer, the "
            "output mean and std, the std the mean-field theory predicts, the saturated and zero "
            "fractions and the gradient std."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--depth", type=int, default=10, help="number of Linear layers (default 10)"
    )
    parser.add_argument("--width", type=int, default=512, help="units per layer (default 512)")
    parser.add_argument(
        "--in-features",
        type=int,
        default=None,
        help="input size of the first layer (default: --width)",
    )
    parser.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    parser.add_argument(
        "--activation",
        choices=ACTIVATION_CHOICES,
        default="tanh",
        help="activation after each layer; 'linear' for none (default tanh)",
    )
    parser.add_argument(
        "--init",
        choices=INIT_CHOICES,
        default="default",
        help="default: torch's nn.Linear init; xavier/kaiming with the activation's "
        "gain; normal: N(0, 1) unscaled; lsuv: Mishkin & Matas (default: default)",
    )
    parser.add_argument("--batch-norm", action="store_true", help="BatchNorm1d after each Linear")
    parser.add_argument("--no-bias", action="store_true", help="Linear layers without bias")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for weights and input (default 0)"
    )
    parser.add_argument(
        "--no-backward", action="store_true", help="forward only: no gradient column"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="OUT.png",
        help="also save a plot of std per layer (measured, theory, gradient)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    for name in ("depth", "width", "batch"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name} must be >= 1; got {getattr(args, name)}")
    if args.in_features is not None and args.in_features < 1:
        raise CommandError(f"--in-features must be >= 1; got {args.in_features}")
    if args.batch_norm and args.batch < 2:
        raise CommandError(
            "--batch-norm needs --batch >= 2 (BatchNorm1d cannot normalise one sample)"
        )
    weights = args.depth * args.width * args.width
    if weights > MAX_WEIGHTS:
        raise CommandError(
            f"--depth {args.depth} x --width {args.width}^2 = {weights:,} weights is "
            f"over {MAX_WEIGHTS:,}; use a smaller --width or --depth"
        )
    if args.plot is not None and not args.plot.parent.exists():
        raise CommandError(f"--plot {args.plot}: folder {args.plot.parent} does not exist")


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from vitalstats.init import build_mlp, propagate

    _check(args)
    generator = torch.Generator().manual_seed(args.seed)
    in_features = args.in_features or args.width
    x = torch.randn(args.batch, in_features, generator=generator)
    model = build_mlp(
        args.depth,
        args.width,
        args.activation,
        args.init,
        in_features=in_features,
        batch_norm=args.batch_norm,
        bias=not args.no_bias,
        batch=x,
        generator=generator,
    )
    report = propagate(model, x, backward=not args.no_backward, seed=args.seed)
    if args.plot is not None:
        _plot(report, args)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a file or a pipe: do not truncate columns to 80
        console = Console(width=120)
    console.print(
        report.table(
            title=f"{args.depth} x Linear({in_features if args.depth == 1 else args.width}->{args.width})"
            f"{' + BatchNorm1d' if args.batch_norm else ''} + {args.activation}, init {args.init}, "
            f"batch {args.batch}"
        )
    )
    last = report.layers[-1]
    theory = "" if last.predicted_std is None else f" (theory {last.predicted_std:.4g})"
    console.print(
        f"output std {last.std:.4g}{theory}, variance {last.std**2:.4g}; "
        f"variance x{report.variance_ratio_per_weight_layer():.3g} per layer on average"
    )
    if args.plot is not None:
        console.print(f"plot written to {args.plot}")
    return 0


def _plot(report, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = range(1, len(report) + 1)
    figure, axis = plt.subplots(figsize=(max(6.0, 0.25 * len(report)), 4.0))
    axis.plot(positions, [layer.std for layer in report], "o-", label="output std (measured)")
    theory = [
        layer.predicted_std if layer.predicted_std is not None else float("nan") for layer in report
    ]
    axis.plot(positions, theory, "x--", label="output std (theory)")
    if not args.no_backward:
        grads = [layer.grad_std if layer.grad_std is not None else float("nan") for layer in report]
        axis.plot(positions, grads, "s:", label="gradient std")
    axis.set_yscale("log")
    axis.set_xticks(
        list(positions), [f"{layer.name}\n{layer.type}" for layer in report], fontsize=6
    )
    axis.set_xlabel("layer")
    axis.set_ylabel("std")
    axis.set_title(f"{args.activation}, init {args.init}, width {args.width}")
    axis.legend()
    figure.tight_layout()
    try:
        figure.savefig(args.plot)
    except OSError as error:
        raise CommandError(
            f"--plot {args.plot}: cannot write: {error.strerror or error}"
        ) from error
    finally:
        plt.close(figure)
