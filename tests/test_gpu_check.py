"""benchmarks/gpu_check.py skips cleanly (exit 0, a message) where there is no CUDA device."""

import importlib.util
from pathlib import Path

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run its checks")
def test_gpu_check_skips_without_cuda(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out
