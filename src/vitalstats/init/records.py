"""The propagation analyser's records: plain data, a rich table, and ``to_dict`` for JSON."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LayerPropagation:
    """What one call of one leaf layer did to the signal.

    ``mean`` and ``std`` are over every entry of the output (population std, float32 or
    wider). ``predicted_std`` is the mean-field prediction (see ``vitalstats.init.theory``),
    None where the theory has no rule for the layer. ``saturated_fraction``: share of outputs
    with |y| > 0.97 for tanh-like layers, y < 0.03 or y > 0.97 for sigmoid. ``zero_fraction``:
    share of outputs <= 0 for the ReLU family (exact zeros for ReLU). ``grad_std``: std of the
    loss gradient with respect to the output, for a unit loss (gradient N(0, 1) at the model's
    output).
    """

    name: str
    type: str
    fan_in: int | None
    fan_out: int | None
    mean: float
    std: float
    predicted_std: float | None
    saturated_fraction: float | None
    zero_fraction: float | None
    grad_std: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PropagationReport(Sequence[LayerPropagation]):
    """Per-layer records in call order; a sequence of :class:`LayerPropagation`."""

    layers: tuple[LayerPropagation, ...]
    input_mean: float
    input_std: float
    backward: bool

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerPropagation]:
        return iter(self.layers)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, str):
            for layer in self.layers:
                if layer.name == index:
                    return layer
            raise KeyError(f"no layer named {index!r}; layers: {[la.name for la in self.layers]}")
        return self.layers[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": {"mean": self.input_mean, "std": self.input_std},
            "backward": self.backward,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def variance_ratio_per_weight_layer(self) -> float | None:
        """Geometric-mean factor by which each Linear/Conv block multiplies the variance.

        ``(std_last / std_input) ** (2 / n)`` over the ``n`` layers that have a fan_in (a
        block is the layer and whatever follows it up to the next one). About 1/3 for a deep
        stack of default-initialised ``nn.Linear`` layers without activations.
        """
        stds = [layer.std for layer in self.layers if layer.fan_in is not None]
        if not stds or not self.input_std > 0 or not stds[-1] > 0:
            return None
        return (stds[-1] / self.input_std) ** (2 / len(stds))

    def table(self, title: str | None = "Signal propagation"):
        """A ``rich.table.Table``: one row per layer call."""
        from rich import box
        from rich.table import Table

        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in (
            "layer",
            "type",
            "fan in",
            "fan out",
            "mean",
            "std",
            "theory",
            "sat",
            "zero",
            "grad std",
        ):
            table.add_column(column, justify="left" if column in ("layer", "type") else "right")
        table.add_row(
            "(input)", "", "", "", _number(self.input_mean), _number(self.input_std), "", "", "", ""
        )
        for layer in self.layers:
            table.add_row(
                layer.name or "(model)",
                layer.type,
                _integer(layer.fan_in),
                _integer(layer.fan_out),
                _number(layer.mean),
                _number(layer.std),
                _number(layer.predicted_std),
                _percent(layer.saturated_fraction),
                _percent(layer.zero_fraction),
                _number(layer.grad_std),
            )
        return table

    def __rich__(self):
        return self.table()

    def __str__(self) -> str:
        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=132, color_system=None, soft_wrap=False).print(self.table())
        return buffer.getvalue()


def _integer(value: int | None) -> str:
    return "-" if value is None else str(value)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.4g}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
