"""The monitor's statistics kernels: the CPU C kernels (vs.stats.native) against the eager ATen
code, time and accuracy, measured in the same run.

    python benchmarks/kernels.py                 # one thread, 784 x 1024 float32 (a Linear weight)
    python benchmarks/kernels.py --numel 4000000 --repeats 50

For each job: the median time of the C kernel and of the eager code it replaces (ratio = C /
eager; below 1 is faster), and the relative error of both against float64. Jobs: a full raw
summary (count, shift, centred sums, min, max, NaN/Inf count); the same with a proposed shift
(the previous step's mean, one pass); Adam's moment sums; a 64-bin log10 |g| histogram of an
8192-value sample; the per-feature summaries of a (128, 784) input batch. Writes
benchmarks/results/kernels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from vitalstats.monitor import probes
from vitalstats.optim.moment_stats import _tensor_sums
from vitalstats.stats import native
from vitalstats.stats.summary import finalize, raw_summary


def median_us(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def relative(value: float, reference: float) -> float:
    return abs(value - reference) / abs(reference) if reference else abs(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=784 * 1024)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "kernels.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ok, why = native.status()
    print(f"C kernels: {why}")
    if not ok:
        raise SystemExit("the C kernels are unavailable here; nothing to compare")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.numel, generator=g) * 1e-3 + 1.0  # mean^2 / var = 1e6: the hard case
    reference = finalize(raw_summary(x.double()))
    rows = []

    def report(job: str, c_us: float, eager_us: float, c_err: float, eager_err: float) -> None:
        rows.append({"job": job, "c_us": c_us, "eager_us": eager_us, "ratio": c_us / eager_us,
                     "c_rel_error": c_err, "eager_rel_error": eager_err})  # fmt: skip
        print(f"{job:34} C {c_us:8.1f} us  eager {eager_us:8.1f} us  ratio {c_us / eager_us:5.2f}"
              f"   rel. error C {c_err:.1e}  eager {eager_err:.1e}")  # fmt: skip

    c = finalize(native.raw_summaries([x])[0])
    e = finalize(raw_summary(x))
    report("summary (variance)", median_us(lambda: native.raw_summaries([x]), args.repeats),
           median_us(lambda: raw_summary(x), args.repeats),
           relative(float(c[2]), float(reference[2])), relative(float(e[2]), float(reference[2])))  # fmt: skip
    hints = torch.tensor([float(reference[1])], dtype=torch.float64)
    c = finalize(native.raw_summaries([x], hints=hints.clone())[0])
    report("summary, proposed shift (1 pass)",
           median_us(lambda: native.raw_summaries([x], hints=hints), args.repeats),
           median_us(lambda: raw_summary(x), args.repeats),
           relative(float(c[2]), float(reference[2])), relative(float(e[2]), float(reference[2])))  # fmt: skip
    m = torch.randn(args.numel, generator=g) * 1e-3
    v = torch.rand(args.numel, generator=g) * 1e-6
    step_ref = (m.double() / (v.double().sqrt() + 1e-8)).square().sum().item()
    c_sums = native.adam_sums([m], [v], [None], [1e-8])[0]
    e_sums = _tensor_sums(m, v, None, 1e-8, torch.empty_like(m))
    work = torch.empty_like(m)
    report("Adam sums (sum of squared steps)",
           median_us(lambda: native.adam_sums([m], [v], [None], [1e-8]), args.repeats),
           median_us(lambda: _tensor_sums(m, v, None, 1e-8, work), args.repeats),
           relative(float(c_sums[2]), step_ref), relative(float(e_sums[2]), step_ref))  # fmt: skip
    grad = torch.randn(args.numel, generator=g) * 1e-3
    c_hist = probes.histogram_counts([grad], 64, (-12.0, 2.0), 8192, True, kernels="auto")
    e_hist = probes.histogram_counts([grad], 64, (-12.0, 2.0), 8192, True, kernels="eager")
    moved = float((c_hist - e_hist).abs().sum() / 2 / e_hist.sum())
    report("log10 |g| histogram, 8192 samples",
           median_us(lambda: probes.histogram_counts([grad], 64, (-12.0, 2.0), 8192, True,
                                                     kernels="auto"), args.repeats),
           median_us(lambda: probes.histogram_counts([grad], 64, (-12.0, 2.0), 8192, True,
                                                     kernels="eager"), args.repeats),
           moved, 0.0)  # fmt: skip
    batch = torch.randn(128, 784, generator=g) * 3 + 10
    ref_m2 = (batch.double() - batch.double().mean(0)).square().sum(0)
    c_feat = finalize(probes.input_feature_entries(batch, "auto")[0][1])
    e_feat = finalize(probes.input_feature_entries(batch, "eager")[0][1])
    report("per-feature summaries (128, 784)",
           median_us(lambda: probes.input_feature_entries(batch, "auto"), args.repeats),
           median_us(lambda: probes.input_feature_entries(batch, "eager"), args.repeats),
           float(((c_feat[:, 2] - ref_m2) / ref_m2).abs().max()),
           float(((e_feat[:, 2] - ref_m2) / ref_m2).abs().max()))  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "machine": platform.platform(),
                               "threads": args.threads, "numel": args.numel, "native": why,
                               "histogram_error": "share of sampled values in another bin",
                               "results": rows}, indent=2))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
