"""summary.py --diagram: every zoo model drawn as blocks from the model table. The structure the
picture is made of is checked (one block per stage, per pool, per layer of the head; each output
shape against the Flax model's own layer-by-layer summary), not the pixels."""

import pytest
from helpers import one_line_error, run_command

from jaxvgg.core.diagram import draw_model, model_blocks
from jaxvgg.core.freeze import under
from jaxvgg.core.specs import CFGS, MODELS, RESNET_BLOCKS, get_spec, size_options
from jaxvgg.core.stages import head_modules


def kinds(blocks, kind):
    return [b for b in blocks if b.kind == kind]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_is_drawn_with_one_block_per_stage(name, tmp_path):
    spec = get_spec(name)
    path = tmp_path / f"{name}.png"
    blocks = draw_model(name, path, image_size=64)
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stages = len(RESNET_BLOCKS) + 1 if spec.family == "resnet" else CFGS[spec.cfg].count("M")  # ResNet: + the stem
    assert len(kinds(blocks, "conv")) == stages
    assert len(kinds(blocks, "fc")) == len(head_modules(name))
    assert blocks[0].shape == (3, 64, 64) and blocks[-1].shape == (3,)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_blocks_output_shape_is_the_models(name):
    """Against the rows of an abstract forward pass (nothing is computed), for every model of the zoo."""
    from jaxvgg.models import create_model, variable_shapes
    from jaxvgg.summary import flax_summary

    model = create_model(name, 3, **size_options(name, 64))
    rows = flax_summary(model, variable_shapes(model, 64), 64).rows
    for block in model_blocks(name, 64)[1:]:
        inside = [r for r in rows if any(under(r.path, m) for m in block.modules)]
        assert inside and inside[-1].shape[1:] == block.shape, (block, inside[-1:])


def test_the_command_draws_svg_and_refuses_other_files(tmp_path):
    out = tmp_path / "pictures" / "vgg16.svg"
    done = run_command("summary.py", "--model", "vgg16", "--image-size", "64", "--diagram", str(out))
    assert out.read_text().lstrip().startswith("<?xml") and "block5" in out.read_text()
    assert "diagram:" in done.stdout and "5 convolution stages" in done.stdout
    refused = run_command("summary.py", "--model", "vgg16", "--diagram", str(tmp_path / "vgg16.jpg"), check=False)
    assert "--diagram" in one_line_error(refused)
