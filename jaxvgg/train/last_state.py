"""The resumable training state, kept by orbax-checkpoint in the run folder's ``last/``.

``last.msgpack`` used to hold it: a VGG-16's parameters and two Adam moments (~1.6 GB) serialised
in memory and written before the next epoch could start. Orbax writes in a background thread
(training goes on; only the copy off the devices happens in the pause), commits atomically (a
step's folder is renamed into place when complete, so a crash mid-write leaves the previous step
readable), keeps the newest ``--keep-last`` steps, and saves a multi-process run's replicated
arrays once, each process taking part. ``best.msgpack`` stays one plain file: it is what
``predict``, ``evaluate`` and ``export`` read and what other tools exchange.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxvgg.core.errors import UserError, WeightMismatchError
from jaxvgg.core.meta import check_resume_meta

# Orbax reports every save and restore at INFO/WARNING ("... is not a valid checkpoint" and such)
# through absl; a training run's console is ours.
logging.getLogger("absl").setLevel(logging.ERROR)


def train_state_tree(state: Any) -> dict[str, Any]:
    """What ``last/`` holds of a :class:`~jaxvgg.train.state.TrainState`: everything a resume needs."""
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "rng": state.rng,
    }


class LastStates:
    """``last/``: one orbax step folder per save, named by the optimizer step it holds."""

    def __init__(self, directory: str | Path, keep: int = 1) -> None:
        self.directory = Path(directory).absolute()
        self.keep = keep
        self._manager: ocp.CheckpointManager | None = None

    @property
    def manager(self) -> ocp.CheckpointManager:
        # Made on first use, so that a run refused before its first save leaves no folder.
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
            handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        return self._manager

    def save(self, state: Any, meta: dict[str, Any]) -> None:
        """Start writing ``state`` and ``meta``; returns once the arrays are copied off the devices.
        Every process of a multi-process run calls it."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():  # stopped again before a single new step: nothing new
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(train_state_tree(state)), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args)

    def wait(self) -> None:
        """Block until the save in flight is committed."""
        if self._manager is not None:
            self._manager.wait_until_finished()

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()  # waits for the save in flight
            self._manager = None

    def latest(self) -> int:
        """The newest committed step; a one-line error if there is none."""
        step = self.manager.latest_step() if self.directory.is_dir() else None
        if step is None:
            raise UserError(f"{self.directory}: no saved training state to continue from")
        return step

    def read_meta(self) -> dict[str, Any]:
        step = self.latest()
        with self._reading(step):
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def read(self) -> tuple[dict[str, Any], Any]:
        """(meta, state tree as host arrays) of the newest step, without a model to pour it into."""
        step = self.latest()
        with self._reading(step):
            target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), self._metadata(step))
            args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            restored = self.manager.restore(step, args=args)
        return restored["meta"], restored["state"]

    def restore(self, state: Any, model: str) -> tuple[Any, dict[str, Any]]:
        """``state`` with the newest step poured in (same shardings), and that step's meta."""
        step = self.latest()
        meta = self.read_meta()
        if meta.get("model") != model:
            raise UserError(f"{self.directory}: saved state is for {meta.get('model')}, not {model}")
        check_resume_meta(meta, self.directory)
        template = train_state_tree(state)
        with self._reading(step):
            bad = _mismatches(_leaf_shapes(template), _leaf_shapes(self._metadata(step)))
            if bad:
                raise WeightMismatchError(f"{self.directory}: saved state does not fit {model}: " + "; ".join(bad[:5]))
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            tree = self.manager.restore(step, args=args)["state"]
        return state.replace(**tree), meta

    def _metadata(self, step: int) -> Any:
        return self.manager.item_metadata(step)["state"].tree

    @contextlib.contextmanager
    def _reading(self, step: int) -> Iterator[None]:
        """What orbax and tensorstore raise for a damaged step, as one line (theirs run to pages)."""
        try:
            yield
        except UserError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            reason = str(e).split(" [", 1)[0][:300]
            raise UserError(f"{self.directory / str(step)}: damaged saved state ({type(e).__name__}: {reason})") from e


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey (named tuples), SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Leaf shapes by path; an optax named tuple and orbax's record of it name their fields alike."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_name(k) for k in path): _shape(leaf) for path, leaf in leaves}


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)  # orbax's ArrayMetadata has one


def _mismatches(expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]) -> list[str]:
    out = [f"{k}: missing" for k in expected if k not in got]
    out += [f"{k}: unexpected" for k in got if k not in expected]
    out += [f"{k}: shape {got[k]}, model wants {v}" for k, v in expected.items() if k in got and got[k] != v]
    return out
