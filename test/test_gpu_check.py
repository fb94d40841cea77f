"""scripts/gpu_check.py (make gpu-check): without a GPU it checks nothing and says so; its rehearsal on the
CPU runs every step (the first GPU run found two steps that had rotted: this keeps them honest)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_a_gpu_it_exits_2_and_says_why(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main([]) == 2
    output = capsys.readouterr()
    assert "needs a CUDA GPU and found none" in output.err and "Nothing was checked" in output.err
    assert "|" not in output.out  # no table: no step ran


def test_rehearsal_runs_every_step_on_the_cpu():
    done = subprocess.run([sys.executable, str(SCRIPT), "--rehearse"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ") and "| ok |" in line]
    assert len(table) >= 8, done.stdout  # train x2, evaluate, DDP, Segmenter, baseline, node, the comparison
    assert "steps ok" in done.stdout and "failed" not in done.stdout
