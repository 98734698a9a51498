"""torchref training, its run folder, and the cross-framework tools (needs torch)."""

import json
import sys

import pytest
from helpers import one_line_error, run_command, run_script

torch = pytest.importorskip("torch")

from jaxvgg.core.config import TrainConfig  # noqa: E402
from torchref.device import pick_device  # noqa: E402
from torchref.train import fit  # noqa: E402

RUN_FILES = ("config.json", "split.json", "history.json", "metrics.json", "curves.png", "confusion.png")


def test_device_choice_falls_back_to_cpu_and_refuses_missing_devices():
    expected = "mps" if torch.backends.mps.is_available() else "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="not available on this machine"):
            pick_device("cuda")


def test_torch_run_writes_the_same_outputs_and_resumes(tiny_data, tmp_path):
    cfg = TrainConfig(
        model="student_cnn",
        data_dir=str(tiny_data),
        image_size=32,
        batch_size=8,
        epochs=2,
        workers=0,
        out_dir=str(tmp_path / "run"),
        max_steps=9,
    )
    assert fit(cfg, "cpu") is None  # stopped mid-epoch 2
    report = fit(TrainConfig(resume=str(tmp_path / "run"), workers=0), "cpu")
    run = tmp_path / "run"
    for name in RUN_FILES:
        assert (run / name).exists(), name
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert report["framework"] == "torch" and report["parameters"] > 0
    assert json.loads((run / "config.json").read_text())["framework"] == "torch"


@pytest.mark.slow
def test_compare_same_split_both_frameworks_then_predict_and_evaluate_each(tiny_data, tmp_path):
    out = tmp_path / "cmp"
    run_script(
        "compare.py",
        "--out",
        str(out),
        "--data-dir",
        str(tiny_data),
        "--model",
        "student_cnn",  # the report, the split and the files, on a model that compiles in seconds
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--workers",
        "2",
    )
    report = (out / "compare.md").read_text()
    assert "| test accuracy |" in report and "Training throughput ratio JAX/PyTorch" in report
    assert (out / "compare.png").stat().st_size > 10_000
    jax_split = json.loads((out / "jax" / "split.json").read_text())
    torch_split = json.loads((out / "torch" / "split.json").read_text())
    assert {k: jax_split[k] for k in ("train", "val", "test")} == {k: torch_split[k] for k in ("train", "val", "test")}
    for side in ("jax", "torch"):
        for name in RUN_FILES:
            assert (out / side / name).exists(), (side, name)
        shown = tmp_path / f"{side}-shown.png"
        args = ("--run", str(out / side), "--show", str(shown), "--device", "cpu")
        table = run_command("predict.py", str(tiny_data / "healthy"), *args).stdout
        assert len(table.splitlines()) == 27 and f"wrote {shown}" in table
        from PIL import Image

        with Image.open(shown) as picture:  # 16 of the 24 images: four columns, four image-and-bars rows
            assert picture.size[0] > 1000 and picture.size[1] > 1500
        evaluated = run_command("evaluate.py", "--run", str(out / side)).stdout
        assert f"accuracy {json.loads((out / side / 'metrics.json').read_text())['accuracy']:.2%}" in evaluated
    msg = one_line_error(run_command("compare.py", "--out", str(out), "--out-dir", "x", check=False))
    assert "sets --out-dir and --split-file itself" in msg


@pytest.mark.slow
def test_bench_runs_both_frameworks_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    printed = run_script(
        "bench.py",
        "--model",
        "student_cnn",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--markdown",
        "--json",
        str(out),
        env={"JAXVGG_MALLOC": "1"},
    ).stdout
    row = json.loads(out.read_text())["rows"][0]
    for fw in ("jax", "torch"):
        r = row[fw]
        assert r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["repeats"] == 1 and len(r["train_times_s"]) == len(r["eval_times_s"]) == 1
        if sys.platform.startswith("linux"):  # the CPU's nominal peak comes from /proc/cpuinfo
            assert r["malloc_keeps_freed_memory"]
            assert r["train_percent_of_peak"] == pytest.approx(100 * r["train_gflops"] / r["peak_gflops"])
    assert row["train_ratio_jax_over_torch"] == pytest.approx(
        row["jax"]["train_images_per_s"] / row["torch"]["train_images_per_s"]
    )
    assert row["macs_per_image"] > 0 and "| `student_cnn` | 32 | 4 |" in printed


def test_bench_times_steps_after_the_first_and_the_warmup():
    from jaxvgg.tools.commands import bench

    calls = []
    first, times = bench.timed(lambda: calls.append(len(calls)), steps=2, warmup=3)
    assert len(calls) == 6 and len(times) == 2 and first >= 0 and min(times) >= 0


def test_bench_repeats_take_medians_and_keep_errors():
    from jaxvgg.tools.commands import bench

    runs = [
        {"first_step_s": f, "train_step_s": t, "eval_step_s": e, "eval_first_s": 1.0, "peak_rss_mb": m, "device": "cpu"}
        for f, t, e, m in ((3.0, 0.5, 0.2, 100), (2.0, 0.1, 0.4, 300), (9.0, 0.3, 0.3, 200))
    ]
    merged = bench.merge_repeats(runs)
    assert (merged["first_step_s"], merged["train_step_s"], merged["eval_step_s"]) == (3.0, 0.3, 0.3)
    assert merged["peak_rss_mb"] == 300 and merged["repeats"] == 3
    timed = [dict(r, train_times_s=[r["train_step_s"]] * 2, eval_times_s=[r["eval_step_s"]]) for r in runs]
    assert bench.merge_repeats(timed)["train_times_s"] == [0.5, 0.5, 0.1, 0.1, 0.3, 0.3]
    assert bench.merge_repeats([runs[0], {"error": "boom"}]) == {"error": "boom"}
