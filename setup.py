"""The one compiled part: jaxvgg's CPU kernels, called through JAX's FFI (jaxvgg/ops/native.py).

Everything else is in pyproject.toml. The kernels need XLA's FFI headers, which jaxlib ships (a build
requirement there); where they cannot be built (no C++ compiler, another platform) the install goes on
without them and the models use their pure-JAX code instead.
"""

import importlib.util
import os
from pathlib import Path

from setuptools import Extension, setup


def ffi_include_dir() -> str:
    """``jax.ffi.include_dir()`` without importing jax (the build environment has jaxlib alone)."""
    spec = importlib.util.find_spec("jaxlib")
    return os.path.join(spec.submodule_search_locations[0], "include") if spec else ""


def csrc_fingerprint() -> str:
    """jaxvgg/ops/csrc_fingerprint.py's, loaded by path: neither jax nor jaxvgg is importable here."""
    path = Path(__file__).resolve().parent / "jaxvgg" / "ops" / "csrc_fingerprint.py"
    spec = importlib.util.spec_from_file_location("csrc_fingerprint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.csrc_fingerprint(path.parents[2])


native = Extension(
    "jaxvgg.ops._native",
    # every .cc of csrc/, the files the fingerprint covers (relative paths, as setuptools wants them)
    sources=sorted(path.as_posix() for path in Path("csrc").glob("*.cc")),
    # the fingerprint covers setup.py too: a changed setup.py must rebuild, or the library is refused
    depends=["csrc/common.h", "setup.py", "jaxvgg/ops/csrc_fingerprint.py"],
    include_dirs=[ffi_include_dir()],
    define_macros=[("JAXVGG_CSRC_FINGERPRINT", f'"{csrc_fingerprint()}"')],
    language="c++",
    # No fused multiply-adds, so each product and sum rounds as in the pure-JAX code the kernels stand in
    # for; no errno from sqrt, which would keep Adam's loop from vectorising. The warnings are XLA's headers'.
    extra_compile_args=[
        "-std=c++17",
        "-O3",
        "-ffp-contract=off",
        "-fno-math-errno",
        "-Wno-attributes",
        "-Wno-return-type",
    ],
    optional=True,
)

setup(ext_modules=[native])
