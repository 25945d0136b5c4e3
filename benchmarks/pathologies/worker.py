"""Run one benchmark case in this process and write its result as JSON.

    python benchmarks/pathologies/worker.py CASE_NAME --out result.json [--case-file F.py]

Three phases, each recorded: (1) the monitored run: seed, ``setup``, ``before_training``,
``vs.Monitor(model, optimizer=opt)`` at its defaults, ``steps`` x (``train_step``,
``mon.step(loss=loss)``), ``mon.diagnose()``, ``mon.close()``; (2) the proof, in plain torch,
after the monitor's hooks are gone; (3) the cost: two fresh copies of the case, one plain and
one monitored, stepped alternately for ``cost_steps`` steps (one flush window), mean step
times compared. A Python exception anywhere is recorded with the phase it happened in.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import vitalstats as vs
from pathologies.case import Case, load_cases

SEVERE = ("warning", "error")


def _build(cls: type[Case]) -> Case:
    torch.manual_seed(cls.seed)
    case = cls()
    case.setup()
    return case


def monitored_run(cls: type[Case], result: dict) -> Case:
    result["phase"] = "setup"
    case = _build(cls)
    case.before_training()
    mon = vs.Monitor(case.model, optimizer=case.optimizer)
    result["phase"] = "train"
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(cls.steps):
        loss = case.train_step(step)
        mon.step(loss=loss)
        losses.append(float(loss.detach().float().mean()))
    result["phase"] = "diagnose"
    findings = mon.diagnose()
    mon.close()
    result["train_s"] = time.perf_counter() - started
    # diagnose() tells a story: root causes first, each followed by the findings it explains
    result["findings"] = [
        {"code": f.code, "severity": f.severity, "layer": f.layer, "step": f.step, "root": root}
        for parent in findings
        for f, root in [(parent, True), *((c, False) for c in parent.consequences)]
    ]
    result["messages"] = [str(f) for f in findings if f.severity in SEVERE][:12]
    result["evidence"] = dict(mon._diagnoser.ctx.evidence)  # the extremes each rule judged
    result["loss_first"] = _finite_or_str(losses[0])
    result["loss_last"] = _finite_or_str(losses[-1])
    result["phase"] = "prove"
    proof = case.prove(losses)
    result["proof"] = proof.to_dict()
    result["proof_text"] = proof.text()
    return case


def cost(cls: type[Case], steps: int) -> dict:
    """Mean step time with the default monitor / without, same loop, alternating each step."""
    plain = _build(cls)
    watched = _build(cls)
    mon = vs.Monitor(watched.model, optimizer=watched.optimizer)
    plain_s: list[float] = []
    monitored_s: list[float] = []
    for step in range(steps):
        t = time.perf_counter()
        plain.train_step(step)
        plain_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        loss = watched.train_step(step)
        mon.step(loss=loss)
        monitored_s.append(time.perf_counter() - t)
    mon.close()
    mean_plain, mean_monitored = statistics.fmean(plain_s), statistics.fmean(monitored_s)
    return {
        "steps": steps,
        "plain_ms": 1e3 * mean_plain,
        "monitored_ms": 1e3 * mean_monitored,
        "ratio": mean_monitored / mean_plain,
        "median_ratio": statistics.median(monitored_s) / statistics.median(plain_s),
    }


def _finite_or_str(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def run(name: str, case_files: tuple[str, ...], cost_steps: int) -> dict:
    torch.set_num_threads(1)
    result: dict = {"name": name, "status": "crash", "phase": "load"}
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cls = load_cases(case_files)[name]
            result.update(cls.describe())
            monitored_run(cls, result)
            result["phase"] = "cost"
            if cost_steps > 0:
                result["cost"] = cost(cls, min(cost_steps, cls.steps))
            result["status"] = "ok" if result["proof"]["holds"] else "invalid"
            result.pop("phase")
        except Exception as error:  # a crash is a result, recorded with its phase
            result["error"] = f"{type(error).__name__}: {error}"
            result["traceback"] = traceback.format_exc()[-4000:]
    seen = {f"{w.category.__name__}: {str(w.message)[:300]}": None for w in caught}
    result["warnings"] = list(seen)[:10]  # Python warnings of the run (monitor's included)
    result["wall_s"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case")
    parser.add_argument("--out", required=True)
    parser.add_argument("--case-file", action="append", default=[])
    parser.add_argument("--cost-steps", type=int, default=100)
    args = parser.parse_args(argv)
    result = run(args.case, tuple(args.case_file), args.cost_steps)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
