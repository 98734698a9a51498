"""Post-training int8 quantization of a run, in its own framework, into a new run folder.

python scripts/quantize.py --run runs/<run> --out-dir runs/<run>-int8 [--calibration-images 256]

The int8 folder works with predict.py and evaluate.py like any run (a PyTorch int8 model runs on
the CPU: fbgemm/x86 kernels). Its quantize.json, and the closing lines, give the file size and
test accuracy of the float and the int8 model; see docs/compression.md.
"""

from __future__ import annotations

import argparse

from jaxvgg.compile_cache import enable_compilation_cache
from jaxvgg.core.cli import main_guard
from jaxvgg.tools.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_run, report


@main_guard
def main() -> None:
    enable_compilation_cache()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a float run folder of either framework")
    p.add_argument("--out-dir", required=True, help="the int8 run folder to write (new or empty)")
    p.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"training images the activation scales are calibrated on (default {DEFAULT_CALIBRATION_IMAGES}, "
        "or the whole training split if smaller)",
    )
    args = p.parse_args()
    print("\n".join(report(quantize_run(args.run, args.out_dir, args.calibration_images), args.out_dir)))


if __name__ == "__main__":
    main()
