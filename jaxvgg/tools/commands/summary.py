"""Print a torchsummary-style table of any model, in JAX or PyTorch; ``--diagram`` also draws it.

python scripts/summary.py --model vgg16 [--framework jax|torch] [--image-size 224] [--num-classes 3]
                          [--freeze none|backbone|PREFIXES] [--diagram vgg16.png|.svg|.pdf]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxvgg.core.cli import main_guard
from jaxvgg.core.diagram import FORMATS, draw_model
from jaxvgg.core.errors import UserError
from jaxvgg.core.freeze import check_freeze, freeze_rule
from jaxvgg.core.specs import MODELS, size_options


@main_guard
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg16", choices=sorted(MODELS))
    p.add_argument("--framework", default="jax", choices=["jax", "torch"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--freeze", default="none", help="count these layers as frozen (as in training)")
    p.add_argument(
        "--conv-route", choices=["cpu", "xla", "im2col"], help="JAX convolution route (default: the backend's)"
    )
    p.add_argument("--diagram", metavar="FILE", help="also draw the network as blocks (.png, .svg or .pdf)")
    args = p.parse_args()
    if args.image_size < 1 or args.num_classes < 1:
        raise UserError("--image-size and --num-classes must be positive")
    if args.diagram and Path(args.diagram).suffix.lower() not in FORMATS:
        raise UserError(f"--diagram {args.diagram}: the file must end in {', '.join(FORMATS)}")
    check_freeze(args.model, args.freeze)
    is_frozen = freeze_rule(args.model, args.freeze)
    options = size_options(args.model, args.image_size)
    try:
        if args.diagram:  # first: it needs neither framework, and a bad size fails here in one line
            Path(args.diagram).parent.mkdir(parents=True, exist_ok=True)
            blocks = draw_model(args.model, args.diagram, args.image_size, args.num_classes)
        if args.framework == "jax":
            from jaxvgg.models import create_model, variable_shapes
            from jaxvgg.summary import flax_summary

            model = create_model(args.model, args.num_classes, conv_route=args.conv_route, **options)
            route = f", convolutions by the {model.conv_route} route"
            summary = flax_summary(model, variable_shapes(model, args.image_size), args.image_size, is_frozen)
        else:
            try:
                import torchref
                from torchref.summary import torch_summary
                from torchref.transfer import freeze
            except ImportError as e:
                raise UserError("--framework torch needs PyTorch: pip install -e '.[torch]'") from e
            model = torchref.create_model(args.model, args.num_classes, **options)
            route = ""
            freeze(model, is_frozen)
            summary = torch_summary(model, args.image_size)
    except ValueError as e:
        raise UserError(str(e)) from e
    size = f"{args.image_size}x{args.image_size}"
    print(f"{args.model} ({args.framework}), input 3x{size}, {args.num_classes} classes{route}")
    print(summary.format())
    if args.diagram:
        stages = sum(b.kind == "conv" for b in blocks)
        print(f"diagram: {args.diagram} ({len(blocks)} blocks, {stages} convolution stages)")


if __name__ == "__main__":
    main()
