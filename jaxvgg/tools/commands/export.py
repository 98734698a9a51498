"""Export a run's best model for use outside jaxvgg: a plain state_dict, ONNX, or Flax variables.

python scripts/export.py --run runs/<run> --format pth|onnx|msgpack [--out FILE]

  pth      a plain state_dict under torchvision's names: model.load_state_dict(torch.load(FILE))
           works on torchvision.models.vgg16(num_classes=3) (and on the matching torchref model)
           with strict=True
  onnx     the model through torch.onnx.export (opset 18, torch.export-based exporter): input
           "images", float32 NCHW normalised as in training, any batch size; output "logits"
  msgpack  flax.serialization of the variables {"params", "batch_stats"}, no header:
           flax.serialization.msgpack_restore(open(FILE, "rb").read())

Runs of either framework export to every format; torch is needed for pth and onnx, and onnx
also needs the packages of the `onnx` extra (pip install -e '.[onnx]'). The default FILE is
RUN/<model>.pth, RUN/<model>.onnx or RUN/<model>.variables.msgpack.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from jaxvgg.core.atomic import write_bytes
from jaxvgg.core.cli import main_guard
from jaxvgg.core.config import float_run_only, run_framework
from jaxvgg.core.errors import UserError
from jaxvgg.core.run import RUN_FILES
from jaxvgg.core.specs import get_spec, size_options
from jaxvgg.core.transforms import IMAGENET_MEAN, IMAGENET_STD
from jaxvgg.core.weights import StateDict

FORMATS = ("pth", "onnx", "msgpack")
DEFAULT_NAMES = {"pth": "{model}.pth", "onnx": "{model}.onnx", "msgpack": "{model}.variables.msgpack"}
# The torch.export-based exporter's own operator set (torch.onnx._internal.exporter._constants.TORCHLIB_OPSET):
# asking for it exactly means no version conversion after the export.
ONNX_OPSET = 18


def best_weights(run: str | os.PathLike) -> tuple[StateDict, dict[str, Any]]:
    """The torch-named numpy weights of a run's best model, and its checkpoint's meta."""
    if run_framework(run) == "jax":
        from jaxvgg.convert import flax_to_torch
        from jaxvgg.train.checkpoint import load_variables

        _, variables, meta = load_variables(run)
        return flax_to_torch(meta["model"], variables), meta
    from torchref.checkpoint import load_model
    from torchref.compress import numpy_state_dict

    model, meta = load_model(run)
    return numpy_state_dict(model), meta


def torch_model(state_dict: StateDict, meta: dict[str, Any]) -> Any:
    """The torchref model with ``state_dict`` loaded strictly, in eval mode."""
    import torch

    import torchref

    name = meta["model"]
    options = size_options(name, meta["image_size"])
    with torch.device("meta"):  # no time spent drawing initial weights that are replaced at once
        model = torchref.create_model(name, meta["num_classes"], **options)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def loads_into(meta: dict[str, Any]) -> str:
    """The constructor that takes an exported state_dict with ``strict=True``, as code."""
    name, n = meta["model"], meta["num_classes"]
    spec = get_spec(name)
    if spec.family == "resnet" or (spec.head == "torchvision" and not spec.separable):
        return f"torchvision.models.{name}(num_classes={n})"  # our names are torchvision's
    options = "".join(f", {k}={v}" for k, v in size_options(name, meta["image_size"]).items())
    return f"torchref.create_model({name!r}, {n}{options})"


def write_pth(state_dict: StateDict, meta: dict[str, Any], out: Path) -> str:
    from torchref.torchfile import save_torch_file

    # The model's own state_dict after a strict load: torchvision's key order and dtypes, nothing else.
    save_torch_file(out, torch_model(state_dict, meta).state_dict())
    return f"a plain state_dict; loads with strict=True into {loads_into(meta)}"


def write_onnx(state_dict: StateDict, meta: dict[str, Any], out: Path) -> str:
    import torch

    try:
        import onnxscript  # noqa: F401  (torch.onnx.export's default exporter needs it, and onnx)
    except ImportError as e:
        raise UserError("--format onnx needs onnx and onnxscript: pip install -e '.[onnx]'") from e
    size = meta["image_size"]
    example = (torch.zeros(2, 3, size, size),)
    program = torch.onnx.export(
        torch_model(state_dict, meta),
        example,
        dynamo=True,  # the default since torch 2.9; the TorchScript exporter is deprecated (docs/conversion.md)
        opset_version=ONNX_OPSET,
        verbose=False,  # no progress lines in the command's output
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    # ONNXProgram.save writes a path, so the atomic write is done by hand: a temporary file, renamed.
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        program.save(tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return (
        f"opset {ONNX_OPSET}; input 'images' float32 [batch, 3, {size}, {size}], RGB scaled to 0..1 and "
        f"normalised with mean {IMAGENET_MEAN} and std {IMAGENET_STD}; output 'logits' [batch, {meta['num_classes']}]"
    )


def write_msgpack(state_dict: StateDict, meta: dict[str, Any], out: Path) -> str:
    import jax
    from flax import serialization

    from jaxvgg.convert import torch_to_flax

    name = meta["model"]
    variables = torch_to_flax(name, state_dict, meta["num_classes"], **size_options(name, meta["image_size"]))
    write_bytes(out, serialization.msgpack_serialize(jax.device_get(variables)))
    return f"Flax variables ({', '.join(variables)}) of jaxvgg.create_model({name!r}, {meta['num_classes']})"


WRITERS = {"pth": write_pth, "onnx": write_onnx, "msgpack": write_msgpack}


def export_run(run: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Write run ``run``'s best model as ``fmt``; returns the file and a line saying what it holds."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    run = Path(run)
    framework = run_framework(run)  # a missing or damaged run folder is one line, before anything is loaded
    float_run_only(run, "exporting")
    if out and Path(out).resolve().parent == run.resolve() and Path(out).name in RUN_FILES:
        raise UserError(f"--out {out}: that is one of the run's own files; choose another name")
    try:
        state_dict, meta = best_weights(run)
        path = Path(out) if out else run / DEFAULT_NAMES[fmt].format(model=meta["model"])
        path.parent.mkdir(parents=True, exist_ok=True)
        what = WRITERS[fmt](state_dict, meta, path)
    except ImportError as e:
        needs = "reading a PyTorch run" if framework == "torch" else f"--format {fmt}"
        raise UserError(f"{run}: {needs} needs PyTorch (pip install -e '.[torch]')") from e
    mb = path.stat().st_size / 1024**2
    return path, f"{path}: {meta['model']} from {run} ({fmt}, {mb:.1f} MB): {what}"


@main_guard
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder of either framework")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", help="the file to write (default: in the run folder, named after the model)")
    args = p.parse_args()
    print(export_run(args.run, args.format, args.out)[1])


if __name__ == "__main__":
    main()
