import contextlib
import os


def pin_to_own_cores() -> None:
    """Each pytest-xdist worker, and the processes it starts, keep to the worker's share of the cores
    (the ranks of one distributed run get them all back: helpers.on_all_cores).

    Unpinned, both workers' PyTorch and XLA thread pools size themselves to every core, so on two
    cores four compute threads contend: a `vgg16_bn` learning run at batch 32 took 107 s in
    PyTorch and 71 s in JAX next to another such run, 46 s and 60 s with each process on a core of
    its own (docs/recipes.md, "All 17 in the suite"). Runs before numpy, JAX or torch is imported,
    so their pools are sized by the mask. `-n 0`, or more workers than cores, leaves it alone.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not (worker.startswith("gw") and count and hasattr(os, "sched_setaffinity")):
        return
    cores, count = sorted(os.sched_getaffinity(0)), int(count)
    if count > 1 and len(cores) >= count:
        os.environ["JAXVGG_TEST_ALL_CORES"] = ",".join(map(str, cores))  # for tests/helpers.on_all_cores
        own = cores[int(worker[2:]) % count :: count]
        # every thread already running too (execnet's, a plugin's): a mask binds only its own thread
        for thread in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [0]:
            with contextlib.suppress(ProcessLookupError):  # a thread that ended since the listing
                os.sched_setaffinity(int(thread), own)


pin_to_own_cores()

import numpy as np  # noqa: E402  (after the pinning: numpy starts its BLAS threads on import)
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

# Tests run on the CPU with two cores; keep XLA from oversubscribing them.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Script subprocesses skip the allocator settings of jaxvgg.core.hostmem: tests are compile-bound, and
# a slice of the suite ran 15% slower with them; test_hostmem and the bench test turn them on.
os.environ.setdefault("JAXVGG_MALLOC", "0")
# Convolution forwards are chosen by the fixed rule, not measured per shape: measuring would add up
# to a few seconds for every new shape the suite traces (jaxvgg.ops.conv_choice; test_conv_choice
# measures). Both forwards are checked against float64 in test_ops either way.
os.environ.setdefault("JAXVGG_CONV_TUNING", "0")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The scripts the tests run get a cache folder of their own (built-in dataset, compiled steps).

    Every suite then starts cold, as on a fresh machine, whatever an earlier run or the user's own
    ``~/.cache/jaxvgg`` holds; each pytest-xdist worker has its own, so no two workers write one file.
    """
    os.environ["JAXVGG_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    # The tests' own compiles go to that folder's compilation cache too, as the scripts' do: many
    # tests build the same programs, and a worker compiles each once (107 hits in a suite, 49 s of
    # compiles saved: docs/testing.md).
    from jaxvgg.compile_cache import enable_compilation_cache

    enable_compilation_cache()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small built-in dataset at 64 px: 24 images per class."""
    from jaxvgg.core.synthetic import make_dataset

    return make_dataset(
        tmp_path_factory.mktemp("data") / "potato", seed=3, counts=(24, 24, 24), size=64, progress=False
    )


@pytest.fixture(scope="session")
def textures(tmp_path_factory):
    """Four classes, 20 images each, 32 px: stripes one way or the other, checks, or noise, in
    random colours, so that colour alone says nothing."""
    root = tmp_path_factory.mktemp("textures")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:32, :32]
    patterns = {
        "horizontal": lambda p: (y // p) % 2,
        "vertical": lambda p: (x // p) % 2,
        "checks": lambda p: ((y // p) + (x // p)) % 2,
        "noise": lambda p: rng.integers(0, 2, (32, 32)),
    }
    for name, pattern in patterns.items():
        (root / name).mkdir()
        for i in range(20):
            mask = pattern(int(rng.integers(2, 5)))[..., None]
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            img = np.where(mask, a, b) + rng.normal(0, 12, (32, 32, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """Six classes, 56 images each, 32 px: one shape per class (square, disc, cross, triangle,
    bar, ring) in the class's own colour, at a random place and size on grey of random brightness.
    The signal is plain (colour alone tells the classes apart), so any model that trains at all
    shows it within a few dozen steps; 336 images make 30 batches of 8 of the training split, so
    those steps are the first epoch of a real run."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:32, :32] / 32
    colours = [(230, 40, 40), (40, 200, 40), (40, 80, 230), (230, 210, 40), (200, 40, 200), (40, 210, 210)]
    shapes = {
        "square": lambda cy, cx, r: (abs(y - cy) < r) & (abs(x - cx) < r),
        "disc": lambda cy, cx, r: (y - cy) ** 2 + (x - cx) ** 2 < r**2,
        "cross": lambda cy, cx, r: (
            ((abs(y - cy) < r) & (abs(x - cx) < r / 3)) | ((abs(x - cx) < r) & (abs(y - cy) < r / 3))
        ),
        "triangle": lambda cy, cx, r: (abs(y - cy) < r) & (abs(x - cx) < (y - cy + r) / 2),
        "bar": lambda cy, cx, r: (abs(y - cy) < r / 3) & (abs(x - cx) < r),
        "ring": lambda cy, cx, r: ((y - cy) ** 2 + (x - cx) ** 2 < r**2) & ((y - cy) ** 2 + (x - cx) ** 2 > r**2 / 4),
    }
    for (name, shape), colour in zip(shapes.items(), colours, strict=True):
        (root / name).mkdir()
        for i in range(56):
            r = rng.uniform(0.22, 0.35)
            cy, cx = rng.uniform(r, 1 - r, 2)
            img = np.where(shape(cy, cx, r)[..., None], colour, rng.integers(60, 140)) + rng.normal(0, 10, (32, 32, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root
