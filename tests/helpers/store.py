"""Watching a RunStore's commits in tests."""

from __future__ import annotations

import threading

import pytest


def committing_threads(store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that run each of ``store``'s commits, appended as they run."""
    names: list[str] = []
    write = store._writer._write

    def recording(*args, **kwargs):
        names.append(threading.current_thread().name)
        return write(*args, **kwargs)

    monkeypatch.setattr(store._writer, "_write", recording)
    return names
