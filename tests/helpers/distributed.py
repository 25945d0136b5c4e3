"""Run a function on several torch.distributed ranks (gloo, CPU) with a hard timeout.

    results = run_ranks(worker, world_size=2, args=(a, b))

``worker(rank, world_size, *args)`` must be a module-level function (it is pickled into
spawned processes). The process group is initialised before it runs and destroyed after.
Each rank's return value comes back through ``torch.save``; an exception in any rank is
re-raised in the parent with that rank's traceback; a rank that has not finished after
``timeout`` seconds gets every rank killed and a ``TimeoutError``, so CI can never hang.

Two guards against flakes of the harness itself (not of the code under test):
- no rank tears its process group down before every rank has left the worker (a file-store
  counter): a rank closing its sockets while a peer still reads the last message of a
  collective makes gloo abort the peer with "Connection closed by peer";
- a failure while setting up the process group, or a rank killed by a signal, is retried once
  with a fresh group. A real bug fails the same way twice.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

_DONE_KEY = "vitalstats-test-done"
_SETUP_FAILED = "SETUP FAILED"


def _entry(
    rank: int,
    world_size: int,
    init_file: str,
    backend: str,
    worker: Callable,
    args: tuple,
    out_dir: str,
) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    out = Path(out_dir)
    try:
        dist.init_process_group(
            backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size
        )
    except BaseException:
        (out / f"rank{rank}.err").write_text(f"{_SETUP_FAILED}\n{traceback.format_exc()}")
        raise SystemExit(1) from None
    store = dist.distributed_c10d._get_default_store()
    try:
        try:
            result = worker(rank, world_size, *args)
        finally:
            (out / f"rank{rank}.left").touch()
            store.add(_DONE_KEY, 1)
        deadline = time.monotonic() + 60
        while store.add(_DONE_KEY, 0) < world_size and time.monotonic() < deadline:
            time.sleep(0.005)
        dist.destroy_process_group()
        torch.save(result, out / f"rank{rank}.pt")
    except BaseException:  # report everything, including SystemExit, to the parent
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise SystemExit(1) from None


class _Retry(Exception):
    pass


def run_ranks(
    worker: Callable,
    world_size: int = 2,
    args: tuple = (),
    timeout: float = 120.0,
    backend: str = "gloo",
) -> list[Any]:
    """Return ``[worker(0, ...), worker(1, ...), ...]`` computed on separate ranks."""
    try:
        return _run_once(worker, world_size, args, timeout, backend, last_try=False)
    except _Retry:
        return _run_once(worker, world_size, args, timeout, backend, last_try=True)


def _run_once(
    worker: Callable, world_size: int, args: tuple, timeout: float, backend: str, last_try: bool
) -> list[Any]:
    import torch

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="vs-dist-") as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [
            ctx.Process(
                target=_entry,
                args=(r, world_size, init_file, backend, worker, args, tmp),
                daemon=True,
            )
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        alive = [r for r, p in enumerate(procs) if p.is_alive()]
        # the ranks stuck inside the worker (the others only wait for them to leave it)
        hung = [r for r in alive if not (Path(tmp) / f"rank{r}.left").exists()] or alive
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        errors = {
            r: (Path(tmp) / f"rank{r}.err").read_text()
            for r in range(world_size)
            if (Path(tmp) / f"rank{r}.err").exists()
        }
        signalled = [r for r, p in enumerate(procs) if r not in alive and (p.exitcode or 0) < 0]
        setup_failed = any(tb.startswith(_SETUP_FAILED) for tb in errors.values())
        if not last_try and (setup_failed or signalled):
            raise _Retry
        if errors:
            detail = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(errors.items()))
            raise RuntimeError(f"{len(errors)} of {world_size} ranks failed:\n{detail}")
        if hung:
            raise TimeoutError(f"ranks {hung} did not finish within {timeout:.0f} s (killed)")
        bad = [r for r, p in enumerate(procs) if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"ranks {bad} exited with codes {[procs[r].exitcode for r in bad]}")
        return [
            torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world_size)
        ]
