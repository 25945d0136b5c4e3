"""``vitalstats lint``: import a model factory and print ``vs.lint``'s static findings."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from vitalstats.commands import CommandError

EXAMPLES = """\
examples:
  vitalstats lint mypackage.models:build_model
  vitalstats lint models.py:make_cnn --input-shape 8,3,32,32
  vitalstats lint torchvision.models:resnet18 --input-shape 2,3,224,224

The factory is called with no arguments and must return a torch.nn.Module. With
--input-shape, an example input torch.randn(shape) is run through the model so checks that
need shapes (e.g. too few values per BatchNorm channel) can run. Exit status: 0 when no
finding has severity "error", 1 otherwise, 2 for a usage error.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lint",
        help="statically check a model for normalisation and initialisation mistakes",
        description="Imports MODULE:FACTORY, builds the model and prints vs.lint's findings.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("factory", help="module.path:factory or path/to/file.py:factory")
    parser.add_argument(
        "--input-shape", type=_shape, default=None, metavar="N,C,...",
        help="shape of an example input (torch.randn) to run through the model",
    )  # fmt: skip
    parser.set_defaults(func=run)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 8,3,32,32, got {text!r}"
        ) from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"every dimension must be >= 1, got {text!r}")
    return shape


def load_factory(spec: str) -> Any:
    """The callable named by ``module.path:name`` or ``file.py:name`` (CommandError if not)."""
    module_name, colon, attribute = spec.rpartition(":")
    if not colon or not module_name or not attribute:
        raise CommandError(
            f"expected MODULE:FACTORY such as mypackage.models:build_model, got {spec!r}"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise CommandError(f"cannot import {spec!r}: no file {path}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # like `python -m`: local modules import
            module = importlib.import_module(module_name)
    except CommandError:
        raise
    except Exception as error:  # any error while importing user code is the user's to fix
        raise CommandError(
            f"cannot import {module_name!r} for {spec!r}: {type(error).__name__}: {error}"
        ) from None
    factory = getattr(module, attribute, None)
    if factory is None:
        raise CommandError(f"module {module_name!r} has no attribute {attribute!r} (from {spec!r})")
    if not callable(factory):
        raise CommandError(f"{spec!r} is a {type(factory).__name__}, not a callable factory")
    return factory


def build_model(spec: str) -> Any:
    import torch

    factory = load_factory(spec)
    try:
        model = factory()
    except Exception as error:
        raise CommandError(f"calling {spec}() failed: {type(error).__name__}: {error}") from None
    if not isinstance(model, torch.nn.Module):
        raise CommandError(f"{spec}() returned {type(model).__name__}; expected a torch.nn.Module")
    return model


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    import vitalstats as vs
    from vitalstats.report.terminal import findings_text

    model = build_model(args.factory)
    example = None if args.input_shape is None else torch.randn(args.input_shape)
    try:
        findings = list(vs.lint(model, example_input=example))
    except Exception as error:
        raise CommandError(
            f"vs.lint could not check {args.factory}: {type(error).__name__}: {error}"
        ) from None
    console = Console()
    if not findings:
        console.print(f"{args.factory}: no findings")
        return 0
    console.print(f"[bold]{args.factory}[/bold]: {len(findings)} finding(s)", highlight=False)
    console.print(findings_text(findings))
    return 1 if any(str(getattr(f, "severity", "")) == "error" for f in findings) else 0
