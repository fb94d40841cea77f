"""scripts/gpu_check.py (make gpu-check): without a GPU it checks nothing and says so."""

import importlib.util
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
