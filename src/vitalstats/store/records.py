"""Plain records the run store hands out, and its one error type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RunStatus = Literal["running", "finished", "crashed", "interrupted"]
EndStatus = Literal["finished", "crashed", "interrupted"]
SeriesKind = Literal["scalar", "histogram"]

RUN_STATUSES: tuple[str, ...] = ("running", "finished", "crashed", "interrupted")
END_STATUSES: tuple[str, ...] = ("finished", "crashed", "interrupted")
FINDING_FIELDS: tuple[str, ...] = ("code", "severity", "layer", "step", "message", "fix")


class StoreError(Exception):
    """A run store cannot be opened or read: missing, not SQLite, newer schema, unknown run."""


@dataclass(frozen=True)
class LayerInfo:
    """One watched module of a run.

    ``name`` is the module's qualified name (``"net.0"``), ``type`` its class name
    (``"Linear"``), ``depth`` its nesting depth (0 for children of the root) and
    ``num_params`` the number of scalar parameters it owns directly.
    """

    name: str
    type: str
    depth: int
    num_params: int


@dataclass(frozen=True)
class RunInfo:
    """One run of a store. Times are Unix seconds (UTC); ``ended_at`` is None while running.

    ``updated_at`` is the time of the run's last committed write: a run whose status is still
    ``"running"`` but whose ``updated_at`` is old was killed without ``end_run``.
    ``config`` is the JSON object given to ``start_run``; ``environment`` is recorded by the
    store itself (hostname, pid, python, torch and vitalstats versions).
    """

    run_id: int
    name: str
    started_at: float
    ended_at: float | None
    status: RunStatus
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    updated_at: float = 0.0
