"""vitalstats: the statistics that live inside neural networks.

    import vitalstats as vs

Building blocks (each usable alone): ``vs.stats`` (streaming moments, EMA), ``vs.data``
(input standardisation), ``vs.nn`` (reference normalisation layers), ``vs.init``
(initialisers, signal propagation), ``vs.optim`` (Adam/AdamW with exposed moments, clipping).
The training-health monitor: ``vs.Monitor``, ``vs.Finding``, ``vs.lint``, ``vs.RunStore``.

Subpackages are imported lazily so ``import vitalstats`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vitalstats._version import __version__

_SUBPACKAGES = ("stats", "data", "nn", "init", "optim", "monitor", "store", "report")
_TOP_LEVEL = {
    "Monitor": "vitalstats.monitor",
    "Finding": "vitalstats.monitor",
    "lint": "vitalstats.monitor",
    "RunStore": "vitalstats.store",
}

__all__ = [  # noqa: RUF022 (grouped: version, subpackages, top-level names)
    "__version__",
    "data",
    "init",
    "monitor",
    "nn",
    "optim",
    "report",
    "stats",
    "store",
    "Finding",
    "Monitor",
    "RunStore",
    "lint",
]

if TYPE_CHECKING:  # pragma: no cover
    from vitalstats import data, init, monitor, nn, optim, report, stats, store
    from vitalstats.monitor import Finding, Monitor, lint
    from vitalstats.store import RunStore


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"vitalstats.{name}")
    if name in _TOP_LEVEL:
        return getattr(importlib.import_module(_TOP_LEVEL[name]), name)
    raise AttributeError(f"module 'vitalstats' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
