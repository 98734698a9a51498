"""Pruning, int8 quantization and distillation: JAX against hand computations and against torch."""

import copy
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvgg
from jaxvgg.compress import prune, quantize
from jaxvgg.compress.distill import distillation_loss
from jaxvgg.convert import flax_to_torch
from jaxvgg.core.sparse import compact_bytes, format_sparsity, from_compact_bytes, sparsity
from jaxvgg.train.optim import make_optimizer
from jaxvgg.train.state import create_train_state
from jaxvgg.train.steps import compile_steps


def student(size=32, seed=0):
    model = jaxvgg.create_model("student_cnn", 3, image_size=size)
    return model, jaxvgg.init_variables(model, size, seed)


def random_batch(rng, n=8, size=32):
    return {
        "image": rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8),
        "label": rng.randint(0, 3, n).astype(np.int32),
        "weight": np.ones(n, np.float32),
    }


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_l1_pruning_zeroes_the_smallest_weights_at_the_asked_amount(scope):
    _, variables = student()
    masks = prune.l1_masks(variables["params"], 0.3, scope)
    pruned = prune.apply_masks(variables["params"], masks)
    rows = sparsity(flax_to_torch("student_cnn", {"params": pruned}, image_size=32))
    total = sum(r.size for r in rows)
    if scope == "global":
        assert sum(r.zeros for r in rows) == round(0.3 * total)
    else:
        assert all(r.zeros == round(0.3 * r.size) for r in rows), rows
    # Every pruned weight is no larger in magnitude than every kept one (per layer, or overall).
    kept, gone = [], []
    all_masks = jax.tree.leaves(masks, is_leaf=lambda x: x is None)
    for w, m in zip(jax.tree.leaves(variables["params"]), all_masks, strict=True):
        if m is not None:
            w = np.asarray(w)
            if scope == "layer":
                assert np.abs(w[~m]).max() <= np.abs(w[m]).min()
            kept.append(np.abs(w[m]).min())
            gone.append(np.abs(w[~m]).max())
    if scope == "global":
        assert max(gone) <= min(kept)
    assert "total" in format_sparsity(rows) and "30.0%" in format_sparsity(rows)


def test_fine_tuning_keeps_pruned_weights_at_exactly_zero():
    model, variables = student()
    params = prune.apply_masks(variables["params"], prune.l1_masks(variables["params"], 0.3))
    params = jax.tree.map(np.array, params)  # host copies: the train step donates its input
    zeros = jax.tree.map(lambda p: np.asarray(p) == 0, params)
    tx = optax.chain(make_optimizer("adam", 1e-2, 1e-5), prune.keep_zeros())
    state = create_train_state(model, {"params": params}, tx)
    train_step, _ = compile_steps()
    rng = np.random.RandomState(0)
    for _ in range(3):
        state, _ = train_step(state, random_batch(rng))
    for z, before, after in zip(
        jax.tree.leaves(zeros), jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True
    ):
        after = np.asarray(after)
        assert (after[z] == 0).all()
        assert not np.array_equal(after[~z], np.asarray(before)[~z])  # the rest trained


def test_compact_file_is_smaller_and_exact(tmp_path):
    _, variables = student()
    pruned = {"params": prune.apply_masks(variables["params"], prune.l1_masks(variables["params"], 0.3))}
    state_dict = flax_to_torch("student_cnn", pruned, image_size=32)
    data = compact_bytes(state_dict)
    dense = io.BytesIO()
    np.savez(dense, **state_dict)
    assert len(data) < 0.8 * len(dense.getvalue())
    back = from_compact_bytes(data)
    assert list(back) == list(state_dict)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(value, back[key])


def test_weight_quantization_error_is_within_half_a_step_per_channel():
    rng = np.random.RandomState(0)
    kernel = rng.randn(3, 3, 16, 8).astype(np.float32) * rng.uniform(0.01, 2, 8).astype(np.float32)
    q, scale = quantize.quantize_weights(kernel)
    assert q.dtype == np.int8 and scale.shape == (8,) and np.abs(q).max() <= 127
    np.testing.assert_allclose(scale, np.abs(kernel).reshape(-1, 8).max(0) / 127, rtol=1e-6)
    error = np.abs(q.astype(np.float32) * scale - kernel)
    assert (error <= scale / 2 + 1e-7).all()


def test_int8_model_stays_within_two_points_of_the_float_model(tiny_data, tmp_path):
    from jaxvgg.core.config import TrainConfig
    from jaxvgg.data.normalize import normalize
    from jaxvgg.tools.lighten import load_images
    from jaxvgg.train.checkpoint import load_variables
    from jaxvgg.train.loop import fit

    run = tmp_path / "run"
    fit(
        TrainConfig(
            model="student_cnn",
            data_dir=str(tiny_data),
            image_size=32,
            batch_size=16,
            epochs=4,
            out_dir=str(run),
            val_fraction=0.0,  # the 57 training images below are the whole 80%
        )
    )
    model, variables, _ = load_variables(run)
    images, labels, _ = load_images(run, "train")  # 57 images; the 15 test images alone are too few
    x = normalize(images)
    qvars = quantize.quantize(variables, quantize.calibrate(model, variables, [x[:32]]))
    assert qvars["params"]["features_0"]["kernel"].dtype == np.int8
    stored = sum(np.asarray(x).nbytes for x in jax.tree.leaves(qvars))  # int8 kernels, float32 scales/biases
    assert stored < 0.3 * sum(np.asarray(p).nbytes for p in jax.tree.leaves(variables))
    float_logits = np.asarray(model.apply(variables, x))
    int8_logits = np.asarray(jax.jit(quantize.quantized_apply(model))(qvars, x))
    float_acc = (float_logits.argmax(-1) == labels).mean()
    int8_acc = (int8_logits.argmax(-1) == labels).mean()
    assert float_acc > 0.5  # a trained model, not chance
    assert abs(float_acc - int8_acc) <= 0.02 + 1e-9
    assert np.abs(int8_logits - float_logits).max() <= 0.05 * np.abs(float_logits).max()


def test_distillation_loss_matches_a_hand_computation():
    rng = np.random.RandomState(0)
    s, t = rng.randn(4, 3).astype(np.float32), rng.randn(4, 3).astype(np.float32)
    labels, weight = np.array([0, 2, 1, 1]), np.ones(4, np.float32)
    T, alpha = 4.0, 0.7

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_t, p_s = softmax(t / T), softmax(s / T)
    kl = (p_t * np.log(p_t / p_s)).sum(1)
    ce = -np.log(softmax(s)[np.arange(4), labels])
    want = (alpha * T * T * kl + (1 - alpha) * ce).mean()
    mean, total = distillation_loss(jnp.asarray(s), jnp.asarray(t), labels, weight, T, alpha)
    assert float(mean) == pytest.approx(want, rel=1e-5) and float(total) == pytest.approx(4 * want, rel=1e-5)
    # alpha = 0 is plain cross-entropy; identical logits leave only the hard term.
    assert float(distillation_loss(s, t, labels, weight, T, 0.0)[0]) == pytest.approx(ce.mean(), rel=1e-5)
    assert float(distillation_loss(s, s, labels, weight, T, alpha)[0]) == pytest.approx(0.3 * ce.mean(), rel=1e-5)


torch_only = pytest.mark.parity


@torch_only
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruning_picks_the_same_weights_as_torch(scope):
    torch = pytest.importorskip("torch")
    import torchref
    from jaxvgg.convert import flax_to_torch, torch_to_flax
    from torchref.compress import prune_model

    torch.manual_seed(0)
    model = torchref.create_model("student_cnn", 3, image_size=32)
    variables = torch_to_flax("student_cnn", model.state_dict(), image_size=32)
    masks = prune.l1_masks(variables["params"], 0.3, scope)
    as_float = jax.tree.map(
        lambda p, m: np.ones_like(p) if m is None else m.astype(np.float32),
        variables["params"],
        masks,
        is_leaf=lambda x: x is None,
    )
    ours = flax_to_torch("student_cnn", {"params": as_float}, image_size=32)
    pruned = copy.deepcopy(model)
    prune_model(pruned, 0.3, scope)
    for name, buf in pruned.named_buffers():
        if name.endswith("weight_mask"):
            np.testing.assert_array_equal(ours[name.removesuffix("_mask")], buf.numpy(), err_msg=name)


@torch_only
def test_distillation_loss_matches_torch():
    torch = pytest.importorskip("torch")
    from torchref.compress import distillation_loss as torch_loss

    rng = np.random.RandomState(1)
    s, t = rng.randn(8, 3).astype(np.float32) * 3, rng.randn(8, 3).astype(np.float32) * 3
    labels = rng.randint(0, 3, 8)
    ours = float(distillation_loss(s, t, labels, np.ones(8, np.float32), 4.0, 0.7)[0])
    theirs = float(torch_loss(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(labels), 4.0, 0.7))
    assert ours == pytest.approx(theirs, rel=1e-5)


@torch_only
def test_torch_pruned_fine_tuning_keeps_zeros_and_saves_plain_weights():
    torch = pytest.importorskip("torch")
    import torchref
    from jaxvgg.core.config import TrainConfig
    from torchref.compress import plain_state_dict, prune_model
    from torchref.train import make_optimizer

    torch.manual_seed(0)
    model = torchref.create_model("student_cnn", 3, image_size=32)
    prune_model(model, 0.3)
    masks = {n: b.clone() for n, b in model.named_buffers() if n.endswith("weight_mask")}
    opt = make_optimizer(TrainConfig(model="student_cnn", lr=1e-2, weight_decay=1e-5), model.parameters())  # fused
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 3, (8,))).backward()
        opt.step()
    plain = plain_state_dict(model)
    assert not any(k.endswith(("_orig", "_mask")) for k in plain)
    for name, mask in masks.items():
        weight = plain[name.removesuffix("_mask")]
        assert (weight[mask == 0] == 0).all() and (weight[mask == 1] != 0).all()


@pytest.mark.slow
def test_lighten_end_to_end_on_a_tiny_dataset(tiny_data, tmp_path):
    pytest.importorskip("torch")
    from helpers import run_script

    out = tmp_path / "lighten"
    proc = run_script(
        "lighten.py",
        "--data-dir",
        str(tiny_data),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--distill-epochs",
        "1",
        "--batch-size",
        "16",
        "--repeats",
        "1",
        # Every code path (training, pruning, int8, distillation), on a base model that trains in seconds.
        "--base",
        "student_cnn",
        "--variants",
        "base",
        "pruned",
        "int8",
        "distilled",
        "--out",
        str(out),
    )
    assert "wrote" in proc.stdout
    rows = json.loads((out / "lighten.json").read_text())
    assert len(rows) == 8 and {r["framework"] for r in rows} == {"JAX", "PyTorch"}
    by = {(r["variant"], r["framework"]): r for r in rows}
    for fw in ("JAX", "PyTorch"):
        base, pruned = by[("student_cnn", fw)], by[("student_cnn pruned 30% + fine-tuned", fw)]
        int8 = by[("student_cnn int8 (post-training)", fw)]
        assert pruned["nonzero"] < 0.75 * base["nonzero"] and pruned["file_mb"] < base["file_mb"]
        assert int8["file_mb"] < 0.3 * base["file_mb"] and int8["nonzero"] == base["nonzero"]
        assert by[("student_cnn distilled from student_cnn", fw)]["params"] == base["params"]
        assert all(r["ms_batch1"] > 0 and r["ms_batch32"] > 0 for r in rows)
    assert (out / "lighten.png").stat().st_size > 0 and "| student_cnn |" in (out / "lighten.md").read_text()


def teacher_run(data, out):
    """A PyTorch run folder by hand (config.json, best.pth): a freshly initialised student_cnn,
    which either framework's trainer reads as its --teacher."""
    torch = pytest.importorskip("torch")
    import torchref
    from jaxvgg.core.config import TrainConfig

    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    out.mkdir()
    cfg = TrainConfig(model="student_cnn", data_dir=str(data), image_size=32, out_dir=str(out))
    (out / "config.json").write_text(json.dumps({**cfg.to_json(), "framework": "torch", "classes": classes}))
    torch.manual_seed(5)
    model = torchref.create_model("student_cnn", len(classes), image_size=32)
    meta = {"framework": "torch", "model": "student_cnn", "num_classes": len(classes), "classes": classes}
    torch.save({"model": model.state_dict(), "meta": {**meta, "image_size": 32, "epoch": 1}}, out / "best.pth")
    return out


def student_settings(data, teacher, out):
    from jaxvgg.core.config import TrainConfig

    kw = dict(model="student_cnn", data_dir=str(data), image_size=32, batch_size=8, epochs=1, workers=0)
    return TrainConfig(**kw, teacher=str(teacher), out_dir=str(out))


@torch_only
def test_jax_distillation_without_augmentation_looks_the_teachers_logits_up_by_sample(tiny_data, tmp_path, capsys):
    """The table computed once gives, for every row of a shuffled training batch, the teacher's
    logits of that very image, and so the same loss as the teacher run in the step."""
    from jaxvgg.compress.distill import distillation, distillation_from_logits
    from jaxvgg.core.run import prepare_run
    from jaxvgg.data.normalize import normalize
    from jaxvgg.parallel import DataParallel
    from jaxvgg.tools.weights import read_weights
    from jaxvgg.train.loop import JaxTrainer, load_teacher

    cfg = student_settings(tiny_data, teacher_run(tiny_data, tmp_path / "teacher"), tmp_path / "student")
    trainer = JaxTrainer(prepare_run(cfg, "jax"), DataParallel.create(1), read_weights)
    table = np.asarray(trainer.aux)
    n = len(trainer.ctx.split.samples("train"))
    assert table.shape == (n, 3) and n % 8, "the last, short batch is dropped in training, not from the table"
    assert f"logits of the {n} training images computed once" in capsys.readouterr().out
    teacher, variables = load_teacher(cfg, 3, read_weights)
    rng = np.random.RandomState(0)
    for batch in list(trainer.batches(1, 0))[:3]:
        images = normalize(batch["image"])
        own = np.asarray(teacher.apply(variables, images, train=False))
        np.testing.assert_allclose(table[np.asarray(batch["index"])], own, rtol=1e-5, atol=1e-5)
        logits = jnp.asarray(rng.randn(8, 3).astype(np.float32))
        looked_up = distillation_from_logits(4.0, 0.7)(logits, batch, images, trainer.aux)
        in_step = distillation(teacher.apply, 4.0, 0.7)(logits, batch, images, variables)
        np.testing.assert_allclose(np.asarray(looked_up), np.asarray(in_step), rtol=1e-5)


@torch_only
def test_torch_distillation_without_augmentation_looks_the_teachers_logits_up_by_sample(tiny_data, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from jaxvgg.core.run import prepare_run
    from torchref.checkpoint import read_torch_weights
    from torchref.distributed import init_distributed
    from torchref.train import TorchTrainer, distillation, load_teacher

    cfg = student_settings(tiny_data, teacher_run(tiny_data, tmp_path / "teacher"), tmp_path / "student")
    ddp = init_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id)
    trainer = TorchTrainer(prepare_run(cfg, "torch"), ddp, "cpu", read_torch_weights)
    n = len(trainer.ctx.split.samples("train"))
    assert f"logits of the {n} training images computed once" in capsys.readouterr().out
    in_step = distillation(load_teacher(cfg, 3, torch.device("cpu"), read_torch_weights), 4.0, 0.7)
    torch.manual_seed(0)
    for x, y, index in list(trainer.batches(1, 0))[:3]:
        out = torch.randn(len(y), 3)
        assert float(trainer.loss_fn(out, x, y, index)) == pytest.approx(float(in_step(out, x, y, None)), rel=1e-5)
