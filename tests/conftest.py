import os

# Tests run on the CPU with two cores; keep XLA from oversubscribing them.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
