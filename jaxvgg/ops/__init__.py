"""Low-level array operations the models are built from."""
