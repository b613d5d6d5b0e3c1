#!/usr/bin/env python
"""Train a dicache zoo model from scratch and write its weights.

    python scripts/train_zoo.py flux_digits|wan_digits|hunyuan_digits|sd3_digits|cogvideox_digits [--steps N] [--out DIR] [--seed S]

With the defaults (no --steps/--seed/--batch-size) this reproduces the shipped
weights in dicache/zoo/weights/<name>/ (one thread, fixed seed). Needs
scikit-learn for the training data (load_digits ships inside it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dicache.zoo import NAMES, save_samples_grid  # noqa: E402
from dicache.zoo.train import train  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=NAMES)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped recipe)")
    ap.add_argument("--out", default=None, help="output directory (default: the package's weights/<name>)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; the shipped weights used 1)")
    ap.add_argument("--grid", default=None, help="also write a sample grid PNG here (rows = classes)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    info = train(
        args.name,
        steps=args.steps,
        out_dir=args.out,
        seed=args.seed,
        batch_size=args.batch_size,
        threads=args.threads,
        progress=not args.no_progress,
    )
    print(json.dumps(info, indent=2))
    print(
        f"training time: {info['train_seconds']:.1f} s wall, {info['cpu_seconds']:.1f} s CPU "
        f"({info['steps']} steps, {info['threads']} thread(s)); final loss {info['final_loss']:.4f}"
    )
    if args.grid:
        save_samples_grid(args.name, args.grid, weights=args.out)
        print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
