"""The JAX side of the epoch driver: a :class:`JaxTrainer` over a jitted, donated train step.

The loop itself is :func:`jaxvgg.core.driver.train`, shared with torchref; this module builds
the state (model, optimizer, starting weights, pruning, freezing, distillation) and supplies
the few functions the driver calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxvgg
from jaxvgg.compress import prune
from jaxvgg.compress.distill import distillation, distillation_from_logits
from jaxvgg.convert import flax_to_torch, torch_to_flax
from jaxvgg.core import driver
from jaxvgg.core.config import TrainConfig
from jaxvgg.core.freeze import freeze_rule
from jaxvgg.core.lr_finder import LrSweep, find_lr
from jaxvgg.core.progress import progress_bar
from jaxvgg.core.run import (
    EpochSums,
    RunContext,
    class_weights,
    prepare_run,
    removed_if_unfinished,
    teacher_logits_note,
    teacher_model,
)
from jaxvgg.core.sparse import format_sparsity, sparsity
from jaxvgg.core.specs import size_options
from jaxvgg.core.weights import StateDict, WeightReader
from jaxvgg.data import Loader, Pipeline
from jaxvgg.data.augment import device_feed
from jaxvgg.data.cache import CachedLoader, ImageCache, host_memory_bytes, layout, placement
from jaxvgg.data.loader import default_workers
from jaxvgg.data.normalize import normalize
from jaxvgg.data.prefetch import prefetch
from jaxvgg.ops import native
from jaxvgg.ops.conv import resolve_route
from jaxvgg.parallel import DataParallel, local_copy
from jaxvgg.train import checkpoint, steps
from jaxvgg.train.checkpoint import load_variables, read_jax_weights
from jaxvgg.train.freeze import freeze_optimizer, frozen_batchnorm_apply
from jaxvgg.train.last_state import LastStates
from jaxvgg.train.optim import epoch_lr, make_optimizer, make_schedule
from jaxvgg.train.state import TrainState, create_train_state
from jaxvgg.transfer import param_labels, starting_variables

PREFETCH = 2  # batches put on the device ahead of the step

# A batch source: host batches, and what puts one on the devices as the steps take it.
Feed = tuple[Loader, Callable[[dict[str, np.ndarray]], dict[str, jax.Array]]]


# Measured (docs/performance.md, "Mixed precision" and "A bfloat16 GEMM by hand"): jaxlib's XLA:CPU
# turns a bfloat16 dot into converts around a float32 one, so on its own bf16 only adds the converts;
# on CPUs with AVX-512 BF16 the convolutions' GEMMs are jaxvgg's kernel's.
CPU_BF16_NOTE = (
    "--precision bf16 on a CPU: XLA:CPU computes bfloat16 matmuls and convolutions through float32 "
    "(no AMX or AVX-512-BF16 kernels), so it trains slower than fp32 here; it is meant for GPUs"
)
CPU_BF16_KERNEL_NOTE = (
    "--precision bf16 on this CPU: the convolutions multiply in bfloat16 by jaxvgg's AVX-512 BF16 kernel "
    "and XLA:CPU computes the rest through float32; on an AMD EPYC faster than fp32 for ResNet-50 and for "
    "evaluating the dense VGGs, but training those ran at 0.8x fp32's (fp32 takes Winograd's convolution, "
    "bf16 does not) and vgg16_dsconv is slower (docs/performance.md)"
)


def precision_note(precision: str, platform: str, route: str = "cpu", devices: int = 1) -> str | None:
    """What the run should be told about ``precision`` on ``platform`` (a JAX backend name), if anything:
    the bfloat16 GEMM runs on the im2col routes of one device (steps for several leave the kernels aside)."""
    if precision != "bf16" or platform != "cpu":
        return None
    kernel = route != "xla" and devices == 1 and native.matmul_bf16_runs_here()
    return CPU_BF16_KERNEL_NOTE if kernel else CPU_BF16_NOTE


def model_options(cfg: TrainConfig) -> dict[str, Any]:
    """``image_size`` for models that need it; bfloat16 compute for ``--precision bf16``; a forced
    ``--conv-route`` (otherwise the model takes its backend's)."""
    options: dict[str, Any] = size_options(cfg.model, cfg.image_size)
    if cfg.precision == "bf16":
        options["dtype"] = jnp.bfloat16
    if cfg.conv_route != "auto":
        options["conv_route"] = cfg.conv_route
    return options


def build_state(
    cfg: TrainConfig,
    num_classes: int,
    steps_per_epoch: int,
    load_weights: bool = True,
    read_weights: WeightReader = read_jax_weights,
    lr_of_step: Callable | None = None,
) -> TrainState:
    """A fresh state; with ``load_weights``, starting from ``--pretrained``/``--init-from`` weights
    (pruned by ``--prune-amount``). A resumed run passes ``load_weights=False`` and restores over it.
    ``lr_of_step`` replaces the configured schedule (the learning-rate range test)."""
    model = jaxvgg.create_model(cfg.model, num_classes, **model_options(cfg))
    variables = jaxvgg.init_variables(model, cfg.image_size, cfg.seed)
    source = cfg.pretrained or cfg.init_from
    if source and load_weights:
        variables, report = starting_variables(
            cfg.model, variables, source, bool(cfg.pretrained), read_weights, **model_options(cfg)
        )
        print(report)
    if cfg.prune_amount and load_weights:
        masks = prune.l1_masks(variables["params"], cfg.prune_amount, cfg.prune_scope)
        variables = {**variables, "params": prune.apply_masks(variables["params"], masks)}
        print(f"pruned {cfg.prune_amount:.0%} of the conv/linear weights ({cfg.prune_scope}):")
        print(format_sparsity(sparsity(flax_to_torch(cfg.model, variables, contiguous=False))))
    is_frozen = freeze_rule(cfg.model, cfg.freeze)
    schedule = lr_of_step or make_schedule(cfg.schedule, cfg.lr, cfg.epochs, steps_per_epoch, cfg.step_size, cfg.gamma)
    tx = freeze_optimizer(
        make_optimizer(cfg.optimizer, schedule, cfg.weight_decay, cfg.momentum), variables["params"], is_frozen
    )
    if cfg.prune_amount:
        tx = optax.chain(tx, prune.keep_zeros())
    apply_fn = frozen_batchnorm_apply(model.apply, is_frozen)
    return create_train_state(model, variables, tx, cfg.seed, apply_fn)


def load_teacher(cfg: TrainConfig, num_classes: int, read_weights: WeightReader) -> tuple[Any, dict[str, Any]]:
    """The teacher run's model and best weights (a JAX or a PyTorch run folder)."""
    name, options = teacher_model(cfg)
    variables = torch_to_flax(name, read_weights(cfg.teacher), num_classes, **options)
    return jaxvgg.create_model(name, num_classes, **options), variables


def trainable_count(state: TrainState, cfg: TrainConfig) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    labels = jax.tree.leaves(param_labels(state.params, freeze_rule(cfg.model, cfg.freeze)))
    sizes = [int(np.prod(np.shape(p))) for p in jax.tree.leaves(state.params)]
    frozen = sum(n for n, label in zip(sizes, labels, strict=True) if label == "frozen")
    return sum(sizes) - frozen, frozen


def evaluate(
    state: TrainState, loader: Loader, eval_step, desc: str = "eval", put: Callable = lambda batch: batch
) -> dict[str, Any]:
    """Loss, accuracy, predictions and float32 logits over ``loader``; ``put`` places a batch (e.g. shards it)."""
    loss = correct = count = 0.0
    labels, preds, logits = [], [], []
    t0 = time.perf_counter()
    batches = prefetch(loader.epoch(0), lambda batch: put(batch.as_dict()), PREFETCH)
    bar = progress_bar(batches, total=len(loader), desc=desc, leave=False, unit="batch", disable=not _is_main())
    for batch in bar:
        m = local_copy(eval_step(state, batch))
        loss += float(m["loss_sum"])
        correct += float(m["correct"])
        count += float(m["count"])
        # The metrics cover the global batch; with several processes this one holds only its rows.
        keep = np.asarray(m["weight"]) > 0
        labels += np.asarray(m["label"])[keep].tolist()
        logits.append(np.asarray(m["logits"], np.float32)[keep])
        preds += logits[-1].argmax(-1).tolist()
    return {
        "loss": loss / max(count, 1),
        "acc": correct / max(count, 1),
        "labels": labels,
        "preds": preds,
        "logits": np.concatenate(logits) if logits else np.zeros((0, 0), np.float32),
        "images_per_s": count / (time.perf_counter() - t0),
    }


class JaxTrainer:
    """What :func:`jaxvgg.core.driver.train` needs, in JAX. The state lives here between steps;
    each step is the pure ``train_step(state, batch)``, compiled once with the state donated."""

    framework = "jax"

    def __init__(
        self, ctx: RunContext, par: DataParallel, read_weights: WeightReader, lr_of_step: Callable | None = None
    ) -> None:
        cfg = ctx.cfg
        self.ctx, self.cfg, self.par = ctx, cfg, par
        self.shard = (jax.process_index(), jax.process_count())
        self.device = jax.devices()[0].platform
        self.feeds: dict[str, Feed] = {}
        self.cache = self._cache_placement()
        self.train_loader, self.train_put = self._feed("train")
        self.batches_per_epoch = len(self.train_loader)
        self.conv_route = resolve_route(cfg.conv_route)
        state = build_state(cfg, len(ctx.classes), self.batches_per_epoch, not cfg.resume, read_weights, lr_of_step)
        self.state = par.replicate(state)
        self.steps = 0
        self.last = LastStates(ctx.checkpoint("last"), max(cfg.keep_last, 1))  # 0: only an interrupted run saves
        weights = class_weights(ctx)  # says so when --teacher leaves them out
        self.aux = None
        loss_fn = steps.cross_entropy_loss(weights)
        if cfg.teacher:
            teacher, teacher_variables = load_teacher(cfg, len(ctx.classes), read_weights)
            if cfg.augment:  # the teacher sees each step's own crops
                loss_fn = distillation(teacher.apply, cfg.temperature, cfg.alpha)
                self.aux = par.replicate(teacher_variables)
            else:
                loss_fn = distillation_from_logits(cfg.temperature, cfg.alpha)
                self.aux = par.replicate(self._teacher_logits(teacher.apply, teacher_variables))
        self.compiled_train_step, self.eval_step = steps.compile_steps(loss_fn, par)

    def _teacher_logits(self, teacher_apply: Callable, variables: Any) -> np.ndarray:
        """The teacher's logits of every training image, in sample order, computed once."""
        cfg, t0 = self.cfg, time.perf_counter()
        pipeline = Pipeline(cfg.image_size, False, cfg.resize)
        samples = self.ctx.split.samples("train")
        loader = Loader(self.ctx.data.root, samples, pipeline, cfg.batch_size, train=False, workers=cfg.workers)
        forward = jax.jit(lambda v, x: teacher_apply(v, normalize(x), train=False))
        variables = jax.device_put(variables)
        rows = [np.asarray(forward(variables, b.image), np.float32)[b.weight > 0] for b in loader.epoch(0)]
        table = np.concatenate(rows)
        print(teacher_logits_note(len(table), time.perf_counter() - t0))
        return table

    def _cache_placement(self) -> str:
        """Where ``--data-cache`` keeps the decoded images: device, host or none (the PIL loader)."""
        cfg, ctx = self.cfg, self.ctx
        if cfg.data_cache == "none" or (cfg.data_cache == "auto" and self.device == "cpu"):
            return "none"
        train = ctx.split.samples("train")
        self.train_layout = layout(
            ctx.data.root, train, Pipeline(cfg.image_size, cfg.augment, cfg.resize), default_workers(cfg.workers)
        )
        others = sum(len(v) for k, v in ctx.split.subsets.items() if k != "train")
        nbytes = self.train_layout.nbytes(len(train)) + others * 3 * cfg.image_size**2
        return placement(cfg.data_cache, nbytes, self.device, _device_memory_bytes(), host_memory_bytes())

    def _feed(self, subset: str) -> Feed:
        """The loader of ``subset`` and what puts its batches on the devices (built once per subset)."""
        if subset in self.feeds:
            return self.feeds[subset]
        cfg, ctx, train = self.cfg, self.ctx, subset == "train"
        pipeline = Pipeline(cfg.image_size, cfg.augment and train, cfg.resize)
        samples = ctx.split.samples(subset)
        options = dict(batch_size=cfg.batch_size, train=train, seed=cfg.seed, shard=self.shard)
        if self.cache == "none":
            loader = Loader(ctx.data.root, samples, pipeline, workers=cfg.workers, **options)
            feed: Feed = (loader, self.par.shard)
        else:
            plan = self.train_layout if train else None
            cache = ImageCache.build(ctx.data.root, samples, pipeline, cfg.workers, plan)
            print(f"{subset}: {cache.describe()} in {self.cache} memory (decoded in {cache.seconds:.1f} s)")
            on_device = self.cache == "device"
            loader = CachedLoader(cache, pipeline, on_device=on_device, **options)
            feed = (loader, device_feed(self.par, pipeline, cache.images if on_device else None))
        self.feeds[subset] = feed
        return feed

    def placement(self) -> str:
        return (
            f"{self.par.size} {self.device} device(s)"
            + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
            + f", convolutions by the {self.conv_route} route"
            + ("" if self.cache == "none" else f", images cached in {self.cache} memory")
            + (
                f"\nnote: {note}"
                if (note := precision_note(self.cfg.precision, self.device, self.conv_route, self.par.size))
                else ""
            )
        )

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        return prefetch(self.train_loader.epoch(epoch, start), lambda batch: self.train_put(batch.as_dict()), PREFETCH)

    def start_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        return epoch_lr(cfg.schedule, cfg.lr, epoch, cfg.epochs, cfg.step_size, cfg.gamma)

    def train_step(self, batch: Any) -> Any:
        self.state, m = self.compiled_train_step(self.state, batch, self.aux)  # already on the devices
        self.steps += 1
        return (m["loss_sum"], m["correct"], m["count"])  # still on the device

    def fetch(self, metrics: list[Any]) -> list[tuple[float, float, float]]:
        return [tuple(float(v) for v in m) for m in local_copy(metrics)]

    def global_sums(self, sums: EpochSums) -> EpochSums:
        return sums  # the sharded step's metrics already cover the global batch

    def end_epoch(self) -> None:
        pass  # the optax schedule counts steps itself

    def evaluate(self, subset: str, desc: str) -> dict[str, Any]:
        loader, put = self._feed(subset)
        return evaluate(self.state, loader, self.eval_step, desc=desc, put=put)

    def steps_done(self) -> int:
        return self.steps

    def save_last(self, progress: dict[str, Any]) -> None:
        """Every process takes part; the files are written while training goes on (orbax, async)."""
        self.last.save(self.state, _meta(self.ctx, **progress))

    def restore_last(self) -> dict[str, Any]:
        self.state, meta = self.last.restore(self.state, self.cfg.model)
        self.steps = int(jax.device_get(self.state.step))
        return meta

    def close(self) -> None:
        """Wait for the save in flight: the run's last state is on disk when ``fit`` returns."""
        self.last.close()

    def save_best(self, meta: dict[str, Any]) -> None:
        checkpoint.save(self.ctx.checkpoint("best"), local_copy(self.state.variables), _meta(self.ctx, **meta))

    def test_best(self, subsets: Sequence[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        _, variables, meta = load_variables(self.ctx.out_dir)
        variables = self.par.replicate(variables)
        state = self.state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
        evs = {}
        for subset in subsets:
            loader, put = self._feed(subset)
            evs[subset] = evaluate(state, loader, self.eval_step, desc=subset, put=put)
        return evs, meta

    def best_state_dict(self) -> StateDict:
        _, variables, _ = load_variables(self.ctx.out_dir)
        return flax_to_torch(self.cfg.model, variables)

    def parameters(self) -> tuple[int, int]:
        return trainable_count(self.state, self.cfg)


def _meta(ctx: RunContext, **progress: Any) -> dict[str, Any]:
    cfg = ctx.cfg
    return {
        "framework": "jax",
        "model": cfg.model,
        "num_classes": len(ctx.classes),
        "classes": ctx.classes,
        "image_size": cfg.image_size,
        **progress,
    }


def fit(cfg: TrainConfig, read_weights: WeightReader = read_jax_weights) -> dict[str, Any] | None:
    """Train as configured; returns the test-split report of the best model (None if stopped mid-epoch).

    ``read_weights`` reads ``--pretrained``/``--init-from``/``--teacher`` (JAX runs by default;
    :func:`jaxvgg.tools.weights.read_weights` reads ``.pth`` files too).
    """
    par = DataParallel.create(cfg.devices)
    par.check_batch_size(cfg.batch_size)
    ctx = prepare_run(cfg, "jax", main=par.is_main, barrier=par.barrier)
    with removed_if_unfinished(ctx):
        if cfg.find_lr:
            sweep = LrSweep()
            return find_lr(ctx, JaxTrainer(ctx, par, read_weights, lr_of_step=sweep.lr), sweep)
        trainer = JaxTrainer(ctx, par, read_weights)
        try:
            return driver.train(ctx, trainer)
        finally:
            trainer.close()


def _device_memory_bytes() -> int | None:
    """The first device's memory (GPU/TPU); None where JAX does not say (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def _is_main() -> bool:
    return jax.process_index() == 0
