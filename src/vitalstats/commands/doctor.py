"""``vitalstats doctor``: train contrasting configurations with the Monitor and write a report."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from vitalstats.commands import CommandError, check_output_file, store_errors

DEFAULT_STORE = Path("runs") / "doctor.sqlite"  # relative to the working directory

EXAMPLES = """\
examples:
  vitalstats doctor                          # every model -> runs/doctor.sqlite + vitalstats-report.html
  vitalstats doctor --model tanh --epochs 3  # only the deep tanh MLPs
  vitalstats doctor --store runs/mine.sqlite --out doctor.html
  vitalstats report runs/doctor.sqlite -o again.html   # re-draw the report from the store
  vitalstats watch runs/doctor.sqlite --once           # the latest run's health in the terminal
"""

MODEL_CHOICES = ("all", "mlp", "cnn", "tanh")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="train the seeds' models in good and bad configurations and explain the statistics",
        description=(
            "Trains small models on data bundled with scikit-learn (breast cancer, digits)\n"
            "in contrasting configurations with the vitalstats Monitor attached, prints what\n"
            "the statistics say and writes an HTML report. One store run per configuration:\n"
            "  mlp   clinical MLP: naive N(0, 1) init vs Kaiming init + BatchNorm1d\n"
            "  cnn   small CNN with BatchNorm2d: torch conventions vs Keras habits\n"
            "  tanh  deep tanh MLP: N(0, 1) weights, std 1/sqrt(fan_in), and the 5/3 tanh gain"
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        action="append",
        choices=MODEL_CHOICES,
        help="model family to train (repeatable; default: all)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per run (default: each model's own)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the data split and init")
    parser.add_argument(
        "--out",
        "-o",
        type=Path,
        default=Path("vitalstats-report.html"),
        help="HTML report to write (default: vitalstats-report.html)",
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help=(
            f"run store to write (default: {DEFAULT_STORE} in the working directory, created if "
            "missing; runs already in a store are kept and new ones get a suffixed name)"
        ),
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vitalstats.doctor import FAMILIES

    if args.epochs is not None and args.epochs < 1:
        raise CommandError(f"--epochs must be at least 1, got {args.epochs}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise CommandError(f"--device {args.device!r} is not a torch device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(
            "--device cuda was given but torch sees no CUDA device; use --device cpu"
        )
    families = (
        FAMILIES if not args.model or "all" in args.model else tuple(dict.fromkeys(args.model))
    )
    store = args.store
    if store is None:
        store = DEFAULT_STORE
        if store.parent.is_file():
            raise CommandError(
                f"cannot keep the store in {store.parent}/: it is a file; pass --store"
            )
    elif not store.parent.exists():
        raise CommandError(f"--store {store}: directory {store.parent} does not exist")
    if store.is_dir():
        raise CommandError(
            f"--store {store} is a directory; give a file such as {store / 'doctor.sqlite'}"
        )
    check_output_file(args.out)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny models: one thread beats thread hand-offs on a busy CPU
    try:
        return _run(args, families, store, str(device))
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, families: tuple[str, ...], store: Path, device: str) -> int:
    from rich.console import Console

    from vitalstats.doctor import run_doctor
    from vitalstats.doctor.summary import print_summary

    console = Console()
    console.print(f"[bold]vitalstats doctor[/bold]: training {', '.join(families)} on {device}")
    with store_errors():
        earlier = _runs_in(store)
        result = run_doctor(
            families, epochs=args.epochs, seed=args.seed, device=device, store=store,
            out=args.out, console=console,
        )  # fmt: skip
    print_summary(console, result.runs)
    kept = f"; {earlier} earlier run(s) kept" if earlier else ""
    console.print(
        f"store:  {result.store}  ({len(result.runs)} run(s) added{kept})", highlight=False
    )
    console.print(f"report: {result.report}  (open it in a browser)", highlight=False)
    selection = "" if not earlier else "".join(f" --run {shlex.quote(r.name)}" for r in result.runs)
    console.print(f"again:  vitalstats report {result.store}{selection} -o {result.report}",
                  highlight=False, soft_wrap=True)  # fmt: skip
    return 0


def _runs_in(store: Path) -> int:
    """How many runs ``store`` already holds (0 when it does not exist yet)."""
    from vitalstats.store import RunStore

    if not store.exists():
        return 0
    with RunStore(store, readonly=True) as existing:
        return len(existing.runs())
