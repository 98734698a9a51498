import os

import pytest

# Tests run on the CPU with two cores; keep XLA from oversubscribing them.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Script subprocesses skip the allocator settings of jaxvgg.core.hostmem: tests are compile-bound, and
# a slice of the suite ran 15% slower with them; test_hostmem and the bench test turn them on.
os.environ.setdefault("JAXVGG_MALLOC", "0")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The scripts the tests run get a cache folder of their own (built-in dataset, compiled steps).

    Every run then starts cold, as on a fresh machine, whatever an earlier run or the user's own
    ``~/.cache/jaxvgg`` holds; each pytest-xdist worker has its own, so no two write one file.
    """
    os.environ["JAXVGG_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small built-in dataset at 64 px: 24 images per class."""
    from jaxvgg.core.synthetic import make_dataset

    return make_dataset(
        tmp_path_factory.mktemp("data") / "potato", seed=3, counts=(24, 24, 24), size=64, progress=False
    )
