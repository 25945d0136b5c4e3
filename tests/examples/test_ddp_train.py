"""examples/ddp_train.py runs under torchrun with two CPU ranks for a few steps."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp_train.py"


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_example_trains_for_a_few_steps_on_two_ranks():
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(EXAMPLE), "--steps", "6", "--log-every", "3"]
    command += ["--backend", "gloo"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own session, so a hang kills torchrun *and* its workers
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"ddp_train.py did not finish within 150 s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    assert "2 ranks (gloo), global batch 64, 6 steps" in output
    losses = [float(v) for v in re.findall(r"step +\d+ +loss ([0-9.]+)", output)]
    assert len(losses) == 2 and all(0 < loss < 5 for loss in losses), output
    assert re.search(r"test accuracy 0\.\d+|test accuracy 1\.0", output), output
    assert "largest buffer divergence across ranks 0\n" in output
