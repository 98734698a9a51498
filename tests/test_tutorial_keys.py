"""The tutorial's own checkpoints load. Its hand-built VGG-16 and light variants are defined here as
the tutorial writes them (five ``nn.Sequential`` blocks ``block1`` … ``block5``, then ``classifier``),
saved with ``torch.save(model.state_dict(), f)`` and loaded into our zoo's rows in both frameworks:
the logits equal the tutorial model's."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import randomize_batchnorm  # noqa: E402
from torch import nn  # noqa: E402

import jaxvgg  # noqa: E402
import torchref  # noqa: E402
from jaxvgg.core.errors import WeightMismatchError  # noqa: E402
from jaxvgg.core.freeze import module_names  # noqa: E402
from jaxvgg.core.specs import CFGS, MODELS, conv_widths, size_options  # noqa: E402
from jaxvgg.core.stages import head_modules, vgg_stages  # noqa: E402
from jaxvgg.core.tutorial_keys import from_tutorial, is_tutorial_layout  # noqa: E402
from jaxvgg.models import variable_shapes  # noqa: E402
from jaxvgg.tools.weights import read_weights  # noqa: E402
from jaxvgg.transfer import starting_variables  # noqa: E402
from torchref.transfer import load_starting_weights  # noqa: E402

VGG16_BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]  # (width, convolutions) of block1 … block5


class DepthwiseSeparableConv(nn.Module):
    """The tutorial's light convolution: depthwise 3x3, then pointwise 1x1."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, kernel_size=3, padding=1, groups=c_in)
        self.pointwise = nn.Conv2d(c_in, c_out, kernel_size=1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


def conv3x3(c_in, c_out):
    return nn.Conv2d(c_in, c_out, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))


class TutorialVGG16(nn.Module):
    """The tutorial's ``vgg16`` class: ``blockK = nn.Sequential(Conv2d, ReLU, …, MaxPool2d)``, then
    ``torch.flatten`` in ``forward`` and ``classifier`` (512*7*7 -> 4096 -> 4096 -> 3, ReLUs). The light
    variants swap the convolution, add BatchNorm, an adaptive pool or another classifier."""

    def __init__(self, conv=conv3x3, batch_norm=False, avgpool=None, classifier=None, blocks=VGG16_BLOCKS):
        super().__init__()
        c_in = 3
        for k, (width, n) in enumerate(blocks, start=1):
            layers = []
            for i in range(n):
                layers += [conv(c_in if i == 0 else width, width)]
                layers += [nn.BatchNorm2d(width)] if batch_norm else []
                layers += [nn.ReLU()]
            setattr(self, f"block{k}", nn.Sequential(*layers, nn.MaxPool2d(kernel_size=(2, 2), stride=(2, 2))))
            c_in = width
        self.n_blocks = len(blocks)
        self.avgpool = avgpool if avgpool is not None else nn.Identity()
        self.classifier = (
            classifier
            if classifier is not None
            else nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 3)
            )
        )

    def forward(self, x):
        for k in range(1, self.n_blocks + 1):
            x = getattr(self, f"block{k}")(x)
        x = torch.flatten(self.avgpool(x), start_dim=1)
        return self.classifier(x)


def slim_head():
    return nn.Sequential(
        nn.Linear(512 * 7 * 7, 1024), nn.ReLU(), nn.Dropout(0.5), nn.Linear(1024, 256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, 3),
    )  # fmt: skip


# Our zoo row -> the tutorial's model. The GAP head puts its Flatten inside the classifier, which moves
# its Linear to classifier.1: the map follows the order of the layers, not their indices.
TUTORIAL = {
    "vgg16_manual": lambda: TutorialVGG16(),
    "vgg16_slim": lambda: TutorialVGG16(avgpool=nn.AdaptiveAvgPool2d((7, 7)), classifier=slim_head()),
    "vgg16_gap_bn": lambda: TutorialVGG16(
        batch_norm=True, avgpool=nn.AdaptiveAvgPool2d(1), classifier=nn.Sequential(nn.Flatten(), nn.Linear(512, 3))
    ),
    "vgg16_dsconv": lambda: TutorialVGG16(
        conv=DepthwiseSeparableConv, avgpool=nn.AdaptiveAvgPool2d((7, 7)), classifier=slim_head()
    ),
}


def tutorial_model(name, seed=0):
    """The tutorial's model with random weights (BatchNorm statistics included), in eval mode."""
    torch.manual_seed(seed)
    model = TUTORIAL[name]()
    randomize_batchnorm(model)
    return model.eval()


def relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def load_torch(name, path, image_size, x):
    """Logits of torchref's ``name`` started from ``path`` (as --init-from does), and its report."""
    ours = torchref.create_model(name, 3, **size_options(name, image_size))
    report = load_starting_weights(ours, name, path, False, read_weights)
    with torch.no_grad():
        return ours.eval()(torch.from_numpy(x)).numpy(), report


def load_jax(name, path, image_size, x):
    """Logits of jaxvgg's ``name`` started from ``path`` (as --init-from does), and its report."""
    options = size_options(name, image_size)
    model = jaxvgg.create_model(name, 3, **options)
    # Every entry is replaced, so the template needs only the shapes (no compiled init: seconds saved)
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes(model, image_size))
    variables, report = starting_variables(name, fresh, path, False, read_weights, **options)
    return np.asarray(jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1))), report


# JAX compiles each VGG-16 for ~5 s, so it runs the hand-built model and the light variant with the
# most to map (BatchNorm, the Flatten inside the classifier); the map itself is framework-neutral,
# and torch runs every variant.
CASES = [
    ("vgg16_manual", 224, (load_torch, load_jax)),
    ("vgg16_gap_bn", 32, (load_torch, load_jax)),
    ("vgg16_slim", 32, (load_torch,)),
    ("vgg16_dsconv", 32, (load_torch,)),
]


@pytest.mark.parametrize(("name", "image_size", "loaders"), CASES, ids=[c[0] for c in CASES])
def test_a_tutorial_checkpoint_gives_the_tutorial_models_logits(name, image_size, loaders, tmp_path):
    tutorial = tutorial_model(name)
    path = tmp_path / "tutorial.pth"
    torch.save(tutorial.state_dict(), path)
    # The hand-built model's head takes 512*7*7 inputs, so it runs at 224 px (one image); the others at 32.
    x = np.random.default_rng(0).standard_normal((1 if image_size == 224 else 4, 3, image_size, image_size))
    x = x.astype(np.float32)
    with torch.no_grad():
        expected = tutorial(torch.from_numpy(x)).numpy()
    for load in loaders:
        logits, report = load(name, path, image_size, x)
        assert relative(logits, expected) <= 1e-4, load.__name__
        lines = [line for line in report.splitlines() if "tutorial's layout recognised" in line]
        assert len(lines) == 1 and "block1-block5" in lines[0], report


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.family == "vgg" and s.cfg == "D"])
def test_the_tutorial_names_map_onto_every_vgg16_row_with_its_shapes(name):
    """Names and shapes only: the models are built on torch's meta device, so nothing is computed."""
    spec = MODELS[name]
    conv = DepthwiseSeparableConv if spec.separable else conv3x3
    pool = {"torchvision": (7, 7), "slim": (7, 7), "gap": (1, 1), "manual": None}[spec.head]
    in_features = 512 * 7 * 7 if pool != (1, 1) else 512
    hidden = {"torchvision": (4096, 4096), "slim": (1024, 256), "manual": (4096, 4096), "gap": ()}[spec.head]
    layers, width = [], in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(0.5)] if spec.head in ("torchvision", "slim") else [])
        width = h
    with torch.device("meta"):
        avgpool = nn.AdaptiveAvgPool2d(pool) if pool else None
        tutorial = TutorialVGG16(conv, spec.batch_norm, avgpool, nn.Sequential(*layers, nn.Linear(width, 3)))
        ours = torchref.create_model(name, 3, **size_options(name, 224))
    source = {k: tuple(v.shape) for k, v in tutorial.state_dict().items()}
    assert is_tutorial_layout(source)
    renamed, note = from_tutorial(source, name)
    assert renamed == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert note.startswith("the tutorial's layout recognised (block1-block5, classifier)")


def test_stages_cut_the_layer_list_both_frameworks_name_and_other_files_pass_unchanged():
    for name, spec in MODELS.items():
        if spec.family == "vgg":
            stages = vgg_stages(name)
            assert [m for s in stages for m in s.modules] + head_modules(name) == module_names(name)
            assert [w for s in stages for w in s.widths] == conv_widths(spec.cfg)
            assert len(stages) == CFGS[spec.cfg].count("M")
            assert [s.pool for s in stages] == [f"features.{i}" for i, m in enumerate(_torch_layers(name)) if m == "M"]
    torchvision_names = {"features.0.weight": (64, 3, 3, 3), "classifier.6.bias": (3,)}
    assert from_tutorial(torchvision_names, "vgg16") == (torchvision_names, None)


def _torch_layers(name):
    """torchref's feature layers, "M" for each max-pool."""
    with torch.device("meta"):
        features = torchref.create_model(name, 3, **size_options(name, 224)).features
    return ["M" if isinstance(m, nn.MaxPool2d) else type(m).__name__ for m in features]


def test_a_tutorial_file_that_does_not_fit_names_the_block_in_one_line():
    with torch.device("meta"):
        short = TutorialVGG16(blocks=[(64, 2), (128, 2), (256, 2), (512, 3), (512, 3)])  # block3 lost a conv
    source = {k: tuple(v.shape) for k, v in short.state_dict().items()}
    with pytest.raises(WeightMismatchError) as e:
        from_tutorial(source, "vgg16_manual")
    message = str(e.value)
    assert "\n" not in message and "block3 holds 2 layers with weights (block3.0, block3.2)" in message
    assert "the model's 3 (features.10, features.12, features.14)" in message
    with pytest.raises(WeightMismatchError, match="resnet50 is no VGG"):
        from_tutorial(source, "resnet50")
