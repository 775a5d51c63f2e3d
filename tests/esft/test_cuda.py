"""The device code paths on CUDA (marked ``gpu``: skipped without a CUDA device; `bash bench/gpu.sh` runs them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("family", ["deepseek_v2", "qwen3_moe", "gpt_oss"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_invariants_hold_on_cuda(family, dtype):
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_check import check_family

    result = check_family(family, dtype)
    assert result["frozen_bit_identical"] and result["adapter_apply_equal"] and result["restore_bit_exact"]
    assert result["max_trained_grad_err"] < (1e-6 if dtype == torch.float32 else 2e-2)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("family", ["deepseek_v2", "qwen3_moe", "gpt_oss", "mixtral"])
def test_packed_rows_give_per_sample_logits_on_cuda(family):
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_check import check_packed

    assert check_packed(family, torch.float32)["max_abs_diff"] < 1e-4


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_esft_lora_trains_and_serves_on_cuda(dtype):
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_check import check_esft_lora

    result = check_esft_lora(dtype)
    assert result["frozen_bit_identical"] and result["rows_in_base_dtype"] and result["restore_bit_exact"]
    if dtype == torch.float32:  # in bf16, batched and one-at-a-time decoding may round differently
        assert result["engine_equals_applied"]


def test_gpu_script_dry_run_on_cpu():
    """bench/gpu.sh --dry-run runs the GPU checks' code on the CPU, so the script cannot rot unseen."""
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"restore_bit_exact": true' in out.stdout and '"restore_bit_exact": false' not in out.stdout
    assert '"engine_equals_applied": true' in out.stdout
