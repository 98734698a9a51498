"""Time the train step and the eval step of JAX and PyTorch on the same model, batch and data.

Both sides time what training runs: JAX the state of :func:`jaxvgg.train.loop.build_state` and
the steps of :func:`jaxvgg.train.steps.compile_steps`, torch :func:`torchref.train.train_one_batch`.

    python scripts/bench.py --model vgg16 --image-size 32 --batch-size 32 [--framework both] [--precision bf16]
    python scripts/bench.py --sweep        # vgg16, vgg16_gap, vgg16_dsconv, student_cnn, resnet50 at 32/64/112/224 px
    python scripts/bench.py --sweep --models vgg16 resnet50 --sizes 32 64

Prints a table and writes JSON (--json). Each framework runs in its own child process, so peak
memory and thread pools are its own. Step times are medians after --warmup untimed steps (the
first steps of a process page in its heap); "first step"
is the time to the first finished train step, compilation included (the persistent compilation
cache is off here, so it is a cold compile; on a CPU new to the model's shapes the first JAX
child also measures their convolution routes, jaxvgg.ops.conv_choice, which later ones read).
Achieved FLOP/s counts 2 x multiply-adds x 3
(forward + two backward products) per training image; "%pk" divides it by the device's peak
(GPUs: the vendor's dense figure for the precision; CPUs: vCPUs x clock x FMA width, nominal).
--repeats N runs each framework N times, alternating, and reports medians: use it on a shared
machine, where identical runs differ by up to 40%. --conv-route picks the JAX convolution route
(default: the backend's, cpu on CPUs, xla elsewhere; jaxvgg.ops.conv). Both children apply the
scripts' allocator settings (jaxvgg.core.hostmem; JAXVGG_MALLOC=0 turns them off in both). The
training loader's images/s on the built-in dataset, if it has been drawn, is printed at the end: PIL
threads at 1, 2 and all cores, and the cached route (--data-cache device/host); --loader times only
the loader, at --image-size (python scripts/bench.py --loader --image-size 224).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxvgg.core.machine import describe_cpu

# Dense peak FLOP/s per GPU (vendor figures, SXM parts): fp32 without tensor cores, bf16 with.
GPU_PEAK_TFLOPS = {
    "H100": {"fp32": 66.9, "bf16": 989.4},
    "H200": {"fp32": 66.9, "bf16": 989.4},
    "A100": {"fp32": 19.5, "bf16": 312.0},
}

SWEEP_MODELS = ("vgg16", "vgg16_gap", "vgg16_dsconv", "student_cnn", "resnet50")
SWEEP_SIZES = {32: 32, 64: 16, 112: 8, 224: 4}  # image size -> batch size on a 2-core CPU
# Untimed steps after the first, in both frameworks: a JAX process's heap takes a few steps to hold
# every temporary of the step without page-faulting fresh memory (vgg16 at 64 px: 350k faults,
# +0.3-0.5 s, on steps 2-5 of one run and none after; PyTorch's by step 3; docs/performance.md).
WARMUP_STEPS = 3


def batch_data(batch_size: int, image_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
        rng.integers(0, 3, batch_size).astype(np.int32),
    )


def cpu_peak_gflops() -> tuple[float, str] | None:
    """Nominal fp32 peak of the CPUs this process may use: vCPUs x clock x FLOPs per cycle from
    the widest FMA the CPU reports (AVX-512: 2 x 16 x 2, AVX2+FMA: 2 x 8 x 2). Linux only; it
    counts SMT siblings as cores, so on a VM whose vCPUs are hyperthreads the true peak is lower."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    mhz = [float(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    if not mhz:
        return None
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= set(flags) else 8
    cpus = len(os.sched_getaffinity(0))
    return cpus * max(mhz) / 1e3 * per_cycle, f"{cpus} vCPUs x {max(mhz):.0f} MHz x {per_cycle} FLOP/cycle"


def peak_gflops(device: str, precision: str) -> tuple[float, str] | None:
    """Peak FLOP/s of the device a child ran on, where it can be known."""
    for name, peaks in GPU_PEAK_TFLOPS.items():
        if name in device.upper():
            return peaks[precision] * 1e3, f"{name} dense {precision} peak"
    if device.lower() == "cpu":
        return cpu_peak_gflops()
    return None


def timed(fn, steps: int, warmup: int = WARMUP_STEPS) -> tuple[float, list[float]]:
    """(seconds of the first call, seconds of each of ``steps`` calls after ``warmup`` more)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, times


def bench_jax(
    model: str,
    image_size: int,
    batch_size: int,
    steps: int,
    precision: str = "fp32",
    conv_route: str | None = None,
    warmup: int = WARMUP_STEPS,
) -> dict:
    """The training run's state (build_state) and compiled steps (compile_steps), timed."""
    import jax

    from jaxvgg.core.config import TrainConfig
    from jaxvgg.ops import native
    from jaxvgg.ops.conv import resolve_route
    from jaxvgg.parallel import DataParallel
    from jaxvgg.train.loop import build_state
    from jaxvgg.train.steps import compile_steps

    cfg = TrainConfig(model=model, image_size=image_size, batch_size=batch_size, lr=1e-4, precision=precision)
    if conv_route:
        cfg.conv_route = conv_route
    # Placed as the training loop places them (jaxvgg.train.loop): the state replicated over the mesh
    # the steps are compiled for, so the second step does not compile again for another sharding.
    par = DataParallel.create(1)
    state = par.replicate(build_state(cfg, 3, steps_per_epoch=1))
    images, labels = batch_data(batch_size, image_size)
    batch = par.shard({"image": images, "label": labels, "weight": np.ones(batch_size, np.float32)})
    train_step, eval_step = compile_steps(parallel=par)
    holder = {"state": state}

    def train():
        holder["state"], metrics = train_step(holder["state"], batch)
        jax.block_until_ready(metrics)

    first, train_times = timed(train, steps, warmup)
    eval_first, eval_times = timed(lambda: jax.block_until_ready(eval_step(holder["state"], batch)), steps, warmup)

    return {
        "first_step_s": first,
        "train_step_s": statistics.median(train_times),
        "eval_step_s": statistics.median(eval_times),
        "eval_first_s": eval_first,
        "train_times_s": train_times,
        "eval_times_s": eval_times,
        "device": jax.devices()[0].device_kind,
        "conv_route": resolve_route(cfg.conv_route),
        "precision": precision,
        "native_kernels": native.enabled(),
    }


def bench_torch(
    model: str, image_size: int, batch_size: int, steps: int, precision: str = "fp32", warmup: int = WARMUP_STEPS
) -> dict:
    import torch

    import torchref
    from jaxvgg.core.config import TrainConfig
    from jaxvgg.core.specs import size_options
    from torchref.data import normalize_uint8
    from torchref.device import pick_device
    from torchref.precision import autocast, prepare, to_device
    from torchref.train import cross_entropy_loss, make_optimizer, train_one_batch

    device = pick_device()
    options = size_options(model, image_size)
    net = prepare(torchref.create_model(model, 3, **options).to(device), device)
    opt = make_optimizer(TrainConfig(model=model, lr=1e-4), net.parameters())
    images, labels = batch_data(batch_size, image_size)
    x_u8 = torch.from_numpy(images).to(device)
    y = torch.from_numpy(labels).long().to(device)

    def inputs():
        return to_device(normalize_uint8(x_u8), device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    loss_fn = cross_entropy_loss(None, device)

    def train():
        net.train()
        train_one_batch(net, inputs(), y, opt, loss_fn, precision)  # the training run's step
        sync()

    def evaluate():
        net.eval()
        with torch.no_grad(), autocast(device, precision):
            net(inputs()).argmax(1)
        sync()

    first, train_times = timed(train, steps, warmup)
    eval_first, eval_times = timed(evaluate, steps, warmup)
    return {
        "first_step_s": first,
        "train_step_s": statistics.median(train_times),
        "eval_step_s": statistics.median(eval_times),
        "eval_first_s": eval_first,
        "train_times_s": train_times,
        "eval_times_s": eval_times,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "threads": torch.get_num_threads(),
        "precision": precision,
    }


def loader_rates(
    root: str | os.PathLike,
    samples: list[tuple[str, int]],
    image_size: int,
    batch_size: int = 32,
    batches: int = 8,
    seconds: float | None = None,
) -> dict[str, float]:
    """Images/s of the training loader (RandomResizedCrop + flip) on ``samples``, each route timed
    over ``batches`` batches (fewer once ``seconds`` have passed):

    - ``images_per_s_N_workers``: the PIL loader's threads, N = 1, 2 and every core;
    - ``images_per_s_cached_device``/``_host``: the cached route, the images decoded once and kept
      on the device or in host memory, crop, resize and flip on the device, timed to the device
      finishing, after one warm-up batch (its compile: ``cached_device_first_batch_s`` ...);
    - ``cache_decode_images_per_s``: the one-off decode of the cached route, with every core.
    """
    import jax

    from jaxvgg.data import Loader, Pipeline
    from jaxvgg.data.augment import device_feed
    from jaxvgg.data.cache import CachedLoader, ImageCache
    from jaxvgg.data.prefetch import prefetch
    from jaxvgg.parallel import DataParallel

    end = None if seconds is None else time.monotonic() + seconds
    pipeline = Pipeline(image_size, augment=True)
    cores = os.cpu_count() or 1
    out: dict[str, float] = {}

    def images_per_s(batch_iter, done=lambda batch: None) -> float:
        t0, n, last = time.perf_counter(), 0, None
        for i, batch in enumerate(batch_iter):
            n, last = n + batch_size, batch
            if i + 1 == batches or (end is not None and time.monotonic() > end):
                break
        done(last)
        return n / (time.perf_counter() - t0)

    for workers in sorted({1, min(2, cores), cores}):
        loader = Loader(root, samples, pipeline, batch_size, train=True, workers=workers)
        out[f"images_per_s_{workers}_workers"] = images_per_s(loader.epoch(0))
    # The cache holds what the timed batches need (and a warm-up batch), not the whole set.
    needed = samples[: min(len(samples), (batches + 2) * batch_size)]
    cache = ImageCache.build(root, needed, pipeline, cores)
    out["cache_decode_images_per_s"] = len(needed) / cache.seconds
    par = DataParallel.create(1)
    for where in ("device", "host"):
        loader = CachedLoader(cache, pipeline, batch_size, train=True, on_device=where == "device")
        put = device_feed(par, pipeline, cache.images if where == "device" else None)
        batch_iter = prefetch(loader.epoch(0), lambda batch, put=put: put(batch.as_dict()))
        t0 = time.perf_counter()
        jax.block_until_ready(next(batch_iter))
        out[f"cached_{where}_first_batch_s"] = time.perf_counter() - t0
        out[f"images_per_s_cached_{where}"] = images_per_s(batch_iter, jax.block_until_ready)
    return out


def format_loader(rates: dict[str, float], image_size: int) -> str:
    """One line per route of :func:`loader_rates`."""
    lines = [f"training loader at {image_size} px (RandomResizedCrop + flip), images/s:"]
    for key, value in rates.items():
        if key.startswith("images_per_s_"):
            name = key.removeprefix("images_per_s_").replace("_", " ")
            lines.append(f"  {name:<18}{value:>9,.0f}")
    if "cache_decode_images_per_s" in rates:
        lines.append(f"  (cached route: decoded once at {rates['cache_decode_images_per_s']:,.0f} images/s)")
    return "\n".join(lines)


def bench_loader(image_size: int, batch_size: int, batches: int = 8, draw: bool = False) -> dict[str, float] | None:
    """:func:`loader_rates` on the built-in dataset: the one already in the cache folder, if any;
    with ``draw``, the default one, drawn if need be."""
    from jaxvgg.core.cache import cache_dir
    from jaxvgg.core.synthetic import ensure_dataset
    from jaxvgg.data import scan_image_folder

    roots = sorted(cache_dir().glob("potato-synthetic-*")) if cache_dir().exists() else []
    if draw:
        roots = [ensure_dataset()]
    if not roots:
        return None
    data = scan_image_folder(roots[0])
    return loader_rates(data.root, data.samples, image_size, batch_size, batches)


def child(
    framework: str,
    model: str,
    image_size: int,
    batch_size: int,
    steps: int,
    out: str,
    precision: str,
    route: str | None,
    warmup: int = WARMUP_STEPS,
) -> None:
    import resource

    from jaxvgg.core.hostmem import keep_freed_memory

    # Both frameworks' scripts run with these allocator settings; so does each child here.
    allocator_tuned = keep_freed_memory()

    if framework == "jax":
        result = bench_jax(model, image_size, batch_size, steps, precision, route, warmup)
    else:
        result = bench_torch(model, image_size, batch_size, steps, precision, warmup)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["malloc_keeps_freed_memory"] = allocator_tuned
    Path(out).write_text(json.dumps(result))


def run_case(
    framework: str,
    model: str,
    image_size: int,
    batch_size: int,
    steps: int,
    precision: str,
    route: str | None,
    warmup: int = WARMUP_STEPS,
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [
            sys.executable,
            "-m",
            "jaxvgg.tools.commands.bench",
            "--child",
            framework,
            "--model",
            model,
            "--image-size",
            str(image_size),
            "--batch-size",
            str(batch_size),
            "--steps",
            str(steps),
            "--warmup",
            str(warmup),
            "--json",
            str(out),
            "--precision",
            precision,
            *(["--conv-route", route] if route else []),
        ]
        # No persistent compilation cache: "first step" measures a cold compile.
        env = {**os.environ, "JAXVGG_COMPILE_CACHE": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
        return json.loads(out.read_text())


def merge_repeats(runs: list[dict]) -> dict:
    """One result from repeated runs of a child: medians of the timings, the largest peak memory."""
    if any("error" in r for r in runs):
        return next(r for r in runs if "error" in r)
    merged = dict(runs[0])
    for key in ("first_step_s", "train_step_s", "eval_step_s", "eval_first_s"):
        merged[key] = statistics.median(r[key] for r in runs)
    merged["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    for key in ("train_times_s", "eval_times_s"):  # every timed step, repeat after repeat
        if all(key in r for r in runs):
            merged[key] = [t for r in runs for t in r[key]]
    merged["repeats"] = len(runs)
    return merged


def bench(
    model: str,
    image_size: int,
    batch_size: int,
    frameworks: list[str],
    steps: int,
    precision: str,
    repeats: int = 1,
    route: str | None = None,
    warmup: int = WARMUP_STEPS,
) -> dict:
    from jaxvgg.summary import model_macs

    macs = model_macs(model, image_size)
    row = {"model": model, "image_size": image_size, "batch_size": batch_size, "macs_per_image": macs}
    row["precision"] = precision
    # Alternate the frameworks (J T J T ...) so that a slow spell of a shared machine hits both.
    runs = {fw: [] for fw in frameworks}
    for _ in range(repeats):
        for fw in frameworks:
            runs[fw].append(run_case(fw, model, image_size, batch_size, steps, precision, route, warmup))
    for fw in frameworks:
        r = merge_repeats(runs[fw])
        if "error" not in r:
            r["train_images_per_s"] = batch_size / r["train_step_s"]
            r["eval_images_per_s"] = batch_size / r["eval_step_s"]
            r["train_gflops"] = 6 * macs * batch_size / r["train_step_s"] / 1e9
            peak = peak_gflops(r["device"], precision)
            if peak is not None:
                r["peak_gflops"], r["peak_basis"] = peak
                r["train_percent_of_peak"] = 100 * r["train_gflops"] / peak[0]
        row[fw] = r
    if all("train_step_s" in row.get(fw, {}) for fw in ("jax", "torch")):
        row["train_ratio_jax_over_torch"] = row["jax"]["train_images_per_s"] / row["torch"]["train_images_per_s"]
        row["eval_ratio_jax_over_torch"] = row["jax"]["eval_images_per_s"] / row["torch"]["eval_images_per_s"]
    return row


def format_rows(rows: list[dict]) -> str:
    head = (
        f"{'model':<14}{'px':>5}{'batch':>6} | {'JAX train':>10}{'torch train':>12}{'ratio':>7} | "
        f"{'JAX eval':>9}{'torch eval':>11}{'ratio':>7} | {'JAX 1st':>8}{'torch 1st':>10} | "
        f"{'JAX GF/s':>9}{'torch GF/s':>11}{'JAX %pk':>8}{'torch %pk':>10} | {'JAX MB':>7}{'torch MB':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        j, t = r.get("jax", {}), r.get("torch", {})

        def g(d, k, spec):
            width = int(spec.split(".")[0] or 0)
            return format(d[k], spec) if k in d else ("err" if "error" in d else "-").rjust(width)

        lines.append(
            f"{r['model']:<14}{r['image_size']:>5}{r['batch_size']:>6} | {g(j, 'train_images_per_s', '10.1f')}"
            f"{g(t, 'train_images_per_s', '12.1f')}{g(r, 'train_ratio_jax_over_torch', '6.2f')}× | "
            f"{g(j, 'eval_images_per_s', '9.1f')}{g(t, 'eval_images_per_s', '11.1f')}"
            f"{g(r, 'eval_ratio_jax_over_torch', '6.2f')}× | {g(j, 'first_step_s', '8.1f')}"
            f"{g(t, 'first_step_s', '10.1f')} | {g(j, 'train_gflops', '9.1f')}{g(t, 'train_gflops', '11.1f')}"
            f"{g(j, 'train_percent_of_peak', '8.0f')}{g(t, 'train_percent_of_peak', '10.0f')} | "
            f"{g(j, 'peak_rss_mb', '7.0f')}{g(t, 'peak_rss_mb', '9.0f')}"
        )
    return "\n".join(lines) + (
        "\n(images/s; ratio = JAX/torch; 1st = seconds to the first finished step; GF/s achieved;"
        " %pk = of the peak below)"
    )


def format_markdown(rows: list[dict]) -> str:
    """The table as Markdown, for the README."""

    def cell(d: dict, key: str, spec: str) -> str:
        return format(d[key], spec) if key in d else "-"

    lines = [
        "| model | px | batch | JAX train img/s | PyTorch train img/s | ratio | JAX eval | PyTorch eval | ratio "
        "| first step JAX / PyTorch | GFLOP/s JAX / PyTorch (% of peak) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        j, t = r.get("jax", {}), r.get("torch", {})
        lines.append(
            f"| `{r['model']}` | {r['image_size']} | {r['batch_size']} | {cell(j, 'train_images_per_s', '.1f')} "
            f"| {cell(t, 'train_images_per_s', '.1f')} | {cell(r, 'train_ratio_jax_over_torch', '.2f')}× "
            f"| {cell(j, 'eval_images_per_s', '.1f')} | {cell(t, 'eval_images_per_s', '.1f')} "
            f"| {cell(r, 'eval_ratio_jax_over_torch', '.2f')}× | {cell(j, 'first_step_s', '.1f')} s / "
            f"{cell(t, 'first_step_s', '.1f')} s | {cell(j, 'train_gflops', '.1f')} "
            f"({cell(j, 'train_percent_of_peak', '.0f')}%) / {cell(t, 'train_gflops', '.1f')} "
            f"({cell(t, 'train_percent_of_peak', '.0f')}%) |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg16")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--framework", choices=["both", "jax", "torch"], default="both")
    p.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up (median reported)")
    p.add_argument("--warmup", type=int, default=WARMUP_STEPS, help="untimed steps after the first (both frameworks)")
    p.add_argument("--repeats", type=int, default=1, help="run each framework this many times, alternating; medians")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--models", nargs="+", default=list(SWEEP_MODELS), help="with --sweep: these models")
    p.add_argument("--sizes", nargs="+", type=int, default=list(SWEEP_SIZES), help="with --sweep: these sizes")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--loader", action="store_true", help="time only the training loader, at --image-size")
    p.add_argument(
        "--checkpoints", action="store_true", help="time saving --model's resumable state (orbax, msgpack, torch.save)"
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument(
        "--conv-route", choices=["cpu", "xla", "im2col"], help="JAX convolution route (default: the backend's)"
    )
    p.add_argument("--child", choices=["jax", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(
            args.child,
            args.model,
            args.image_size,
            args.batch_size,
            args.steps,
            args.json,
            args.precision,
            args.conv_route,
            args.warmup,
        )
        return
    if args.loader:
        rates = bench_loader(args.image_size, args.batch_size, batches=16, draw=True)
        print(format_loader(rates, args.image_size))
        if args.json:
            Path(args.json).write_text(json.dumps({"loader": rates, "cpu_count": os.cpu_count()}, indent=2))
        return
    frameworks = ["jax", "torch"] if args.framework == "both" else [args.framework]
    if args.checkpoints:
        from jaxvgg.tools.checkpoint_pause import checkpoint_pauses  # imports both frameworks: only here

        print(f"CPU: {describe_cpu()}", flush=True)
        print(checkpoint_pauses(args.model, max(args.repeats, 3), tuple(frameworks)))
        return
    cases = (
        [(m, s, SWEEP_SIZES.get(s, 8)) for m in args.models for s in args.sizes]
        if args.sweep
        else [(args.model, args.image_size, args.batch_size)]
    )
    print(f"CPU: {describe_cpu()}", flush=True)
    rows = []
    for model, size, batch in cases:
        rows.append(
            bench(
                model, size, batch, frameworks, args.steps, args.precision, args.repeats, args.conv_route, args.warmup
            )
        )
        print(format_rows(rows[-1:]).splitlines()[-2], flush=True)
    loader_size = max(s for _, s, _ in cases)
    loader = bench_loader(loader_size, 32)
    print()
    print(format_rows(rows))
    if args.markdown:
        print()
        print(format_markdown(rows))
    bases = {r[fw]["peak_basis"] for r in rows for fw in frameworks if "peak_basis" in r.get(fw, {})}
    for basis in sorted(bases):
        print(f"peak: {basis}")
    if "jax" in frameworks:
        from jaxvgg.train.loop import precision_note

        # a JAX child that failed has an error and no device: nothing to note for it
        platforms = {r["jax"]["device"].lower() for r in rows if "device" in r.get("jax", {})}
        notes = {precision_note(args.precision, platform) for platform in platforms}
        for note in sorted(n for n in notes if n):
            print(f"note: {note}")
        kernels = {r["jax"]["native_kernels"] for r in rows if "native_kernels" in r.get("jax", {})}
        for on in sorted(kernels):
            state = "on" if on else "off (not built, or JAXVGG_NATIVE=0: pure JAX)"
            print(f"JAX's hand-written CPU kernels (jaxvgg.ops.native): {state}")
    if loader is not None:
        print(format_loader(loader, loader_size))
    result = {"rows": rows, "loader": loader, "cpu_count": os.cpu_count(), "cpu": describe_cpu()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
