"""The training-health monitor: hooks -> probes -> diagnoses -> run store.

    mon = vs.Monitor(model, optimizer=opt, store="runs/exp1.sqlite")
    ...  mon.step(loss=loss)  ...
    for finding in mon.diagnose(): print(finding)

``vs.lint(model, example_input)`` runs the checks without training. Codes: ``CODES``;
metrics: ``METRICS``; docs/monitor.md has both tables.

Names are imported on first use, so reading findings (``Finding``, ``story``, ``CODES``) from
a run store needs no torch import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "CODES": "findings",
    "Finding": "findings",
    "Severity": "findings",
    "TrainingStopped": "findings",
    "METRICS": "registry",
    "Metric": "registry",
    "story": "causes",
    "MonitorConfig": "config",
    "Thresholds": "config",
    "StepMetrics": "metrics",
    "lint": "linting",
    "EvaluationPhase": "monitor",
    "Monitor": "monitor",
}

__all__ = [
    "CODES",
    "METRICS",
    "EvaluationPhase",
    "Finding",
    "Metric",
    "Monitor",
    "MonitorConfig",
    "Severity",
    "StepMetrics",
    "Thresholds",
    "TrainingStopped",
    "lint",
    "story",
]

if TYPE_CHECKING:  # pragma: no cover
    from vitalstats.monitor.causes import story
    from vitalstats.monitor.config import MonitorConfig, Thresholds
    from vitalstats.monitor.findings import CODES, Finding, Severity, TrainingStopped
    from vitalstats.monitor.linting import lint
    from vitalstats.monitor.metrics import StepMetrics
    from vitalstats.monitor.monitor import EvaluationPhase, Monitor
    from vitalstats.monitor.registry import METRICS, Metric


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'vitalstats.monitor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vitalstats.monitor.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
