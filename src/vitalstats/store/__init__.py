"""The run store: a SQLite file of runs, per-layer scalar series, histograms and findings.

    store = vs.RunStore("runs/exp1.sqlite")

The monitor writes it (buffered, batched, crash-safe up to the last flush); the report and
the CLI read it, live or after the run, from any process. Schema: docs/store.md.
"""

from vitalstats.store.records import LayerInfo, RunInfo, RunStatus, StoreError
from vitalstats.store.run_store import RunStore
from vitalstats.store.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "LayerInfo", "RunInfo", "RunStatus", "RunStore", "StoreError"]
