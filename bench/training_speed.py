"""How retraining time scales with the number of runs (runs resampled from the shipped file).

    python bench/training_speed.py [--model lite] [--runs 600,2000,10000] [--epochs 3]

Prints seconds per epoch of `fit` (train 70% + validation 15% of N runs) and the projected
time of a full retraining at the epochs the shipped default model needed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from core import bundle
from training import train
from training.config import TrainConfig
from training.dataset import load_file, split_runs

DATA = str(Path(__file__).resolve().parents[1] / "data" / "minisom_runs.jsonl.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite")
    parser.add_argument("--runs", default="600,2000,10000")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    args = parser.parse_args()
    runs = load_file(DATA)
    needed = 80
    if bundle.DEFAULT_PATH.exists():
        manifest = bundle.load(bundle.DEFAULT_PATH.read_bytes()).manifest
        needed = int(manifest["metrics"]["training"]["epochs_run"])
    rng = np.random.default_rng(0)
    print(f"model {args.model}, batch {args.batch_size}, {args.epochs} epochs timed\n")
    print("| runs | s / epoch | projected retraining |")
    print("| --- | --- | --- |")
    for n in (int(v) for v in args.runs.split(",")):
        sample = [runs[i] for i in rng.integers(0, len(runs), n)]
        split = split_runs(sample, 0.15, 0.15, seed=0)
        config = TrainConfig(
            model=args.model, epochs=args.epochs, batch_size=args.batch_size,
            early_stopping_patience=args.epochs + 1,
        )  # fmt: skip
        started = time.perf_counter()
        trained = train.fit(config, split.train, split.validation, Path(f"var/bench/speed{n}"))
        per_epoch = trained.seconds / args.epochs
        print(
            f"| {n} | {per_epoch:.2f} | {per_epoch * needed / 60:.1f} min at {needed} epochs "
            f"(measured {time.perf_counter() - started:.0f} s for {args.epochs}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
