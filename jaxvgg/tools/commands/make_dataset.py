"""Draw the built-in potato-leaf dataset (ImageFolder layout, 256x256 JPEGs).

python scripts/make_dataset.py --out data/potato [--seed 0] [--counts 1000 1000 152] [--force]

--out may be a new or empty folder, or a dataset this script wrote earlier (it is replaced);
any other folder is refused unless --force is given.
"""

from __future__ import annotations

import argparse
import time

from jaxvgg.core.cli import main_guard
from jaxvgg.core.errors import UserError
from jaxvgg.core.synthetic import CLASSES, DEFAULT_COUNTS, make_dataset


@main_guard
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write (an earlier dataset of this script is replaced)")
    p.add_argument("--force", action="store_true", help="replace --out even if it holds other files (they are lost)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--counts",
        type=int,
        nargs=len(CLASSES),
        default=list(DEFAULT_COUNTS),
        metavar="N",
        help=f"images per class, in the order {' '.join(CLASSES)}",
    )
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = p.parse_args()
    if any(c < 0 for c in args.counts) or args.size < 32:
        raise UserError("--counts must be non-negative and --size at least 32")
    t = time.perf_counter()
    out = make_dataset(args.out, args.seed, args.counts, args.size, force=args.force)
    print(f"wrote {sum(args.counts)} images to {out} in {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    main()
