"""Classify images, files or folders, with a trained run (JAX or PyTorch).

python scripts/predict.py leaf.jpg --run runs/<run>
python scripts/predict.py some_folder/ a.jpg b.png --run runs/<run> [--csv out.csv] [--json out.json]
python scripts/predict.py leaf.jpg --run runs/<run> --show leaf.png   # the image, its class, the probabilities
python scripts/predict.py leaf.jpg --run runs/<run> --explain cam.png [--class healthy]   # where the model looks

A run with a calibration.json (every run trained since it was added) gives calibrated
probabilities and marks "unsure" the images that look like none of its training images
(docs/calibration.md).

Unreadable images are listed on stderr as "skipped <file>: <reason>" and the others predicted.
Exit status: 0 all predicted; 1 some files skipped; 2 an error (bad run folder or flags, or no
readable image at all), told in one "error:" line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxvgg.compile_cache import enable_compilation_cache
from jaxvgg.core.atomic import write_json, write_text
from jaxvgg.core.cli import main_guard
from jaxvgg.core.errors import UserError
from jaxvgg.core.hostmem import keep_freed_memory
from jaxvgg.core.images import format_predictions, image_paths, load_batch, prediction_rows, predictions_csv
from jaxvgg.core.plots import plot_predictions
from jaxvgg.tools.explain import explain_predictions
from jaxvgg.tools.predict import predictor, run_settings


@main_guard
def main() -> int:
    keep_freed_memory()  # see jaxvgg/core/hostmem.py: freed buffers are reused, not faulted in again
    enable_compilation_cache()  # a second run loads its compiled steps
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", metavar="target", help="image files and folders of images")
    p.add_argument("--run", required=True, help="run folder written by train_jax.py or train_torch.py")
    p.add_argument("--csv", help="also write the table here (one row per image)")
    p.add_argument("--json", help="also write the predictions here")
    p.add_argument(
        "--show",
        metavar="FILE.png",
        help="draw each image (the first 16) with its predicted class and probabilities, as the "
        "tutorial's predict_one_image does, into this picture",
    )
    p.add_argument(
        "--explain",
        metavar="FILE.png",
        help="draw each image (the first 16) as the model saw it under its Grad-CAM heat map (red: where the "
        "last convolution stage found evidence for the class), laid out as --show, into this picture",
    )
    p.add_argument(
        "--class", dest="class_name", metavar="NAME", help="--explain this class (default: each image's predicted one)"
    )
    p.add_argument("--device", help="PyTorch runs: cpu, cuda or mps (default: MPS, then CUDA, then CPU)")
    args = p.parse_args()
    if args.class_name is not None and not args.explain:
        raise UserError("--class names the class --explain draws: give --explain FILE.png too")
    cfg, _ = run_settings(args.run)  # a bad run folder is reported before any image is read
    found = list(dict.fromkeys(path for target in args.targets for path in image_paths(target)))
    images, paths, bad = load_batch(found, cfg.image_size, cfg.resize)
    if not paths and len(args.targets) == 1 and not Path(args.targets[0]).is_dir():
        (path, reason), *_ = bad
        raise UserError(f"{path}: {reason}")
    for path, reason in bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not paths:
        where = f"{args.targets[0]}: none of its" if len(args.targets) == 1 else "none of the"
        raise UserError(f"{where} {len(bad)} image file(s) could be read (see the skipped lines)")
    predict, classes = predictor(args.run, args.device)
    probs, unsure = predict.judge(images)  # unsure: None for a run trained before calibration.json
    if args.explain:  # before any output, so that a bad --class stops the command cleanly
        explain_predictions(args.run, images, paths, probs, classes, args.explain, args.class_name, args.device, unsure)
    print(format_predictions(paths, probs, classes, unsure))
    rows = prediction_rows(paths, probs, classes, unsure)
    if args.csv:
        write_text(Path(args.csv), predictions_csv(rows, classes))
    if args.json:
        write_json(Path(args.json), rows)
    if args.show:
        plot_predictions(paths, probs, classes, Path(args.show), unsure)
    for name in filter(None, (args.csv, args.json, args.show, args.explain)):
        print(f"wrote {name}")
    return 1 if bad else 0


if __name__ == "__main__":
    main()
