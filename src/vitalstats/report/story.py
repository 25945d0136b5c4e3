"""Findings as a story for every reader (HTML report, doctor, lint, watch): one place that
turns whatever holds findings into ``vitalstats.monitor.causes``'s root-cause-first form.

    from vitalstats.report.story import told, where
    for root in told(store.findings(run)):
        print(root.code, where(root), [c.code for c in root.consequences])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _as_findings(items: Iterable[Any]) -> list[Any]:
    """``vs.Finding``s from Findings, story output (consequences nested) or store rows."""
    from vitalstats.monitor.findings import Finding

    out = []
    for item in items:
        if isinstance(item, Finding):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(Finding.from_dict(dict(item)))
        else:  # any object with the six fields
            names = ("code", "severity", "layer", "step", "message", "fix")
            out.append(Finding.from_dict({name: getattr(item, name, None) for name in names}))
    return out


def told(findings: Iterable[Any]) -> list[Any]:
    """Root causes first, each with the findings it explains in ``.consequences``.

    Accepts raw findings (``Monitor.diagnose()``, ``vs.lint``), run-store dicts, or a story
    already told (it is flattened and told again, so nothing is lost or counted twice)."""
    from vitalstats.monitor import story
    from vitalstats.monitor.causes import flatten

    return story(flatten(_as_findings(findings)))


def count(findings: Iterable[Any]) -> int:
    """How many entries the story has: one per code (however many layers it was seen on),
    roots and consequences alike."""
    from vitalstats.monitor.causes import flatten

    return len(flatten(told(findings)))


def where(finding: Any, max_layers: int = 6) -> str:
    """``net.2, net.4 +3 more`` for the layers a grouped finding was seen on ("" if run-level)."""
    layers = list(finding.all_layers)
    more = len(layers) - max_layers
    return ", ".join(layers[:max_layers]) + (f" +{more} more" if more > 0 else "")
