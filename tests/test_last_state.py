"""``last/``, the resumable state kept by orbax: rotation, what counts as saved, clear errors.
(Resumes that are bit-identical to uninterrupted runs, mid-epoch and in two processes, are in
test_train.py and test_parallel.py.)"""

from types import SimpleNamespace

import numpy as np
import pytest

from jaxvgg.core.errors import UserError
from jaxvgg.core.run import has_checkpoint
from jaxvgg.train.last_state import LastStates


def state_at(step: int) -> SimpleNamespace:
    rng = np.random.default_rng(step)
    params = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)}}
    return SimpleNamespace(
        step=np.int32(step), params=params, batch_stats={}, opt_state=(np.int32(step),), rng=np.zeros(2, np.uint32)
    )


def test_the_newest_steps_are_kept_and_read_back_exactly(tmp_path):
    last = LastStates(tmp_path / "last", keep=2)
    for step in (3, 6, 9):
        last.save(state_at(step), {"model": "m", "epoch": step // 3})
    last.save(state_at(9), {"model": "m", "epoch": 99})  # nothing trained since: not saved again
    last.close()
    assert sorted(p.name for p in (tmp_path / "last").iterdir() if p.name.isdigit()) == ["6", "9"]
    meta, tree = LastStates(tmp_path / "last").read()
    assert meta == {"model": "m", "epoch": 3}
    np.testing.assert_array_equal(tree["params"]["conv"]["kernel"], state_at(9).params["conv"]["kernel"])


def test_a_step_still_being_written_is_not_a_checkpoint(tmp_path):
    last = tmp_path / "last"
    (last / "4.orbax-checkpoint-tmp-1764612345").mkdir(parents=True)  # what a crash mid-write leaves
    assert not has_checkpoint(last)
    with pytest.raises(UserError, match="no saved training state to continue from"):
        LastStates(last).read()


def test_a_state_of_other_shapes_or_another_model_is_refused_in_one_line(tmp_path):
    last = LastStates(tmp_path / "last")
    last.save(state_at(1), {"model": "m", "epoch": 1, "batch": 0, "best_score": 0.0, "bad_epochs": 0})
    last.close()
    other = state_at(1)
    other.params["conv"]["kernel"] = np.zeros((3, 3, 2, 8), np.float32)
    with pytest.raises(UserError, match=r"does not fit m: params/conv/kernel: shape \(3, 3, 2, 4\), model wants"):
        LastStates(tmp_path / "last").restore(other, "m")
    with pytest.raises(UserError, match="saved state is for m, not vgg16"):
        LastStates(tmp_path / "last").restore(other, "vgg16")


def test_a_damaged_state_is_one_line(tmp_path):
    last = LastStates(tmp_path / "last")
    last.save(state_at(2), {"model": "m"})
    last.close()
    for manifest in (tmp_path / "last" / "2" / "state").rglob("manifest.ocdbt"):
        manifest.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="damaged saved state"):
        LastStates(tmp_path / "last").read()


def test_bench_checkpoints_times_every_way_of_saving_the_state():
    pytest.importorskip("torch")
    from jaxvgg.tools.checkpoint_pause import checkpoint_pauses

    table = checkpoint_pauses("student_cnn", repeats=1)
    for line in ("JAX state:", "one msgpack file (before orbax)", "orbax last/ (async)", "last.pth (torch.save)"):
        assert line in table, table


def test_a_save_in_flight_keeps_the_values_of_arrays_donated_after_it(tmp_path):
    """The train step donates the state while orbax is still writing it in the background."""
    import jax
    import jax.numpy as jnp

    w = jnp.arange(4 * 1024 * 1024, dtype=jnp.float32)  # 16 MB: the write takes a moment
    expected = np.asarray(w).copy()
    state = SimpleNamespace(step=np.int32(1), params={"w": w}, batch_stats={}, opt_state=(), rng=np.zeros(2, np.uint32))
    last = LastStates(tmp_path / "last")
    last.save(state, {"model": "m"})
    update = jax.jit(lambda w: w * 2.0 + 1.0, donate_argnums=0)
    for _ in range(3):
        w = update(w)
    w.block_until_ready()
    last.close()
    np.testing.assert_array_equal(last.read()[1]["params"]["w"], expected)
