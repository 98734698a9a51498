"""scripts/gpu_check.py --smoke: the GPU check's code paths on a CPU, so the script cannot rot
between GPU runs (its figures here mean nothing)."""

import json

import pytest
from helpers import run_script

pytest.importorskip("torch")


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_section(tmp_path):
    out = tmp_path / "gpu"
    printed = run_script("gpu_check.py", "--smoke", "--out", str(out)).stdout
    results = json.loads((out / "gpu.json").read_text())
    for name in ("ceiling", "vgg16", "loader", "tutorial"):
        assert "error" not in results[name], (name, results[name])
    assert results["ceiling"]["bf16_tflops"] > 0
    rows = results["vgg16"]["rows"]
    assert {(r["framework"], r["precision"]) for r in rows} == {
        (f, p) for f in ("jax", "torch") for p in ("bf16", "fp32")
    }
    assert all(r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0 for r in rows)
    assert results["tutorial"]["epochs_run"] == 1 and results["tutorial"]["projected_40_epochs_min"] > 0
    table = (out / "gpu.md").read_text()
    assert "| jax | bf16 | 2 |" in table and "--preset tutorial:" in table and "gpu.md" in printed
