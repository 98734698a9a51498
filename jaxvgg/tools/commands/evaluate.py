"""Re-evaluate a run's best model on its test split (or on another ImageFolder).

python scripts/evaluate.py --run runs/<run> [--data-dir DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxvgg.compile_cache import enable_compilation_cache
from jaxvgg.core.cli import main_guard
from jaxvgg.core.config import load_run_config
from jaxvgg.core.hostmem import keep_freed_memory
from jaxvgg.core.metrics import classification_report
from jaxvgg.core.run import data_root
from jaxvgg.data import Loader, Pipeline, load_split, scan_image_folder
from jaxvgg.tools.predict import predictor


@main_guard
def main() -> None:
    keep_freed_memory()  # see jaxvgg/core/hostmem.py: freed buffers are reused, not faulted in again
    enable_compilation_cache()  # a second run loads its compiled steps
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--data-dir", help="evaluate on every image of this ImageFolder instead of the run's test split")
    args = p.parse_args()
    cfg = load_run_config(args.run)
    if args.data_dir:
        data = scan_image_folder(args.data_dir)
        samples, classes = data.samples, data.classes
    else:
        data = scan_image_folder(data_root(cfg))
        split = load_split(Path(args.run) / "split.json", data)
        samples, classes = split.samples("test"), split.classes
    pipeline = Pipeline(cfg.image_size, resize=cfg.resize)
    loader = Loader(data.root, samples, pipeline, cfg.batch_size, train=False, workers=cfg.workers)
    predict, _ = predictor(args.run)
    labels, preds = [], []
    for batch in loader.epoch(0):
        keep = batch.weight > 0
        labels += batch.label[keep].tolist()
        preds += predict(batch.image[keep]).argmax(-1).tolist()
    report = classification_report(labels, preds, classes)
    print(f"{args.run}: accuracy {report['accuracy']:.2%}, macro-F1 {report['macro_f1']:.3f} on {len(labels)} images")
    for c, m in report["per_class"].items():
        print(f"  {c:<16} precision {m['precision']:.3f}  recall {m['recall']:.3f}  f1 {m['f1']:.3f}  n={m['support']}")


if __name__ == "__main__":
    main()
