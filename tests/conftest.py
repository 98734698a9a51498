import os

import pytest

# Tests run on the CPU with two cores; keep XLA from oversubscribing them.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small built-in dataset at 64 px: 24 images per class."""
    from jaxvgg.data.synthetic import make_dataset

    return make_dataset(
        tmp_path_factory.mktemp("data") / "potato", seed=3, counts=(24, 24, 24), size=64, progress=False
    )
