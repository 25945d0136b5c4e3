"""The training-health monitor: hooks -> probes -> diagnoses -> run store.

    mon = vs.Monitor(model, optimizer=opt, store="runs/exp1.sqlite")
    ...  mon.step(loss=loss)  ...
    for finding in mon.diagnose(): print(finding)

``vs.lint(model, example_input)`` runs the checks without training. Codes: ``CODES`` and
docs/monitor.md.
"""

from vitalstats.monitor.config import MonitorConfig, Thresholds
from vitalstats.monitor.findings import CODES, Finding, Severity
from vitalstats.monitor.linting import lint
from vitalstats.monitor.metrics import StepMetrics
from vitalstats.monitor.monitor import EvaluationPhase, Monitor
from vitalstats.monitor.registry import METRICS, Metric
from vitalstats.monitor.story import story

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
    "lint",
    "story",
]
