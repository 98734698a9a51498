"""Classify one image, or every image in a folder, with a trained run (JAX or PyTorch).

python scripts/predict.py leaf.jpg --run runs/<run>
python scripts/predict.py some_folder/ --run runs/<run>
"""

from __future__ import annotations

import argparse
import sys

from jaxvgg.cli import main_guard
from jaxvgg.config import load_run_config
from jaxvgg.predict import format_predictions, image_paths, load_batch, predictor


@main_guard
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="an image file or a folder of images")
    p.add_argument("--run", required=True, help="run folder written by train_jax.py or train_torch.py")
    args = p.parse_args()
    cfg = load_run_config(args.run)
    images, paths, bad = load_batch(image_paths(args.target), cfg.image_size)
    for path, reason in bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not paths:
        return 1
    predict, classes = predictor(args.run)
    probs = predict(images)
    print(format_predictions(paths, probs, classes))
    return 1 if bad else 0


if __name__ == "__main__":
    main()
