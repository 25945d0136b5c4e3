"""The pathology benchmark: does vs.Monitor, at its defaults, name what is wrong?

    python benchmarks/pathologies/run.py                       # every case, 2 at a time
    python benchmarks/pathologies/run.py --cases 'gpt2*,*lr*' --jobs 1 --timeout 120
    python benchmarks/pathologies/run.py --list

Each case (``cases/*.py``) is an ordinary training loop on a real architecture and real
bundled data, healthy or with one known fault, run in its own subprocess
(``worker.py``) with a timeout: a crash or a timeout is recorded and the run goes on.
Prints a per-case table and the summary (confusion table, recall, false-alarm rate, root
named first, crashes, monitor cost) and writes JSON to benchmarks/results/pathologies.json.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rich.console import Console  # noqa: E402

from pathologies.case import load_cases  # noqa: E402
from pathologies.score import summarise, verdict  # noqa: E402
from pathologies.table import print_calibration, print_cases, print_summary  # noqa: E402

DEFAULT_JSON = HERE.parent / "results" / "pathologies.json"


def select(names: list[str], patterns: str | None) -> list[str]:
    """Names matching any comma-separated glob (a pattern without wildcards: substring)."""
    if not patterns:
        return names
    globs = [p if any(ch in p for ch in "*?[") else f"*{p}*" for p in patterns.split(",") if p]
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]


def run_one(name: str, meta: dict, args: argparse.Namespace) -> dict:
    """One case in a subprocess; its JSON result, or a crash/timeout record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(HERE / "worker.py"), name, "--out", str(out)]
        cmd += ["--cost-steps", str(args.cost_steps)]
        for path in args.case_file:
            cmd += ["--case-file", path]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        started = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=args.timeout, env=env
            )
        except subprocess.TimeoutExpired:
            return {
                **meta,
                "status": "timeout",
                "wall_s": time.perf_counter() - started,
                "error": f"no result within {args.timeout:g} s",
            }
        if out.is_file():
            return json.loads(out.read_text())
        return {
            **meta,
            "status": "crash",
            "phase": "process",
            "error": f"worker exited {proc.returncode} without a result",
            "traceback": (proc.stderr or "")[-4000:],
            "wall_s": time.perf_counter() - started,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="comma-separated globs on case names")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per case")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument("--cost-steps", type=int, default=100, help="timed steps (0: skip)")
    parser.add_argument("--case-file", action="append", default=[], help="extra case module")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)

    registry = load_cases(tuple(args.case_file))
    names = select(sorted(registry), args.cases)
    console = Console(width=max(Console().width, 200))
    if args.list:
        for n in names:
            d = registry[n].describe()
            console.print(f"{n:36} {d['category']:22} {d['root'] or '-':22} {d['arch']}")
        return 0
    if not names:
        console.print(f"no case matches {args.cases!r}")
        return 2
    metas = {n: registry[n].describe() for n in names}
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = {pool.submit(run_one, n, metas[n], args): n for n in names}
        for future in as_completed(futures):
            r = verdict(future.result())
            results[r["name"]] = r
            codes = ",".join(r["severe_codes"]) or "-"
            console.print(
                f"[{len(results):3}/{len(names)}] {r['name']:36} {r['status']:8} "
                f"{r.get('wall_s', 0):5.1f} s  {codes}",
                highlight=False,
                markup=False,
            )
            console.file.flush()
    ordered = [results[n] for n in names]
    summary = summarise(ordered)
    print_cases(console, ordered)
    print_summary(console, summary)
    print_calibration(console, summary)
    import torch

    import vitalstats

    payload = {
        "meta": {
            "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - started,
            "jobs": args.jobs,
            "timeout_s": args.timeout,
            "cost_steps": args.cost_steps,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "vitalstats": vitalstats.__version__,
            "machine": platform.machine(),
        },
        "summary": summary,
        "cases": ordered,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=1, default=str))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
