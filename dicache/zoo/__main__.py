"""``python -m dicache.zoo grid NAME PATH [--seed S] [--steps N] [--guidance G]``: write a sample grid PNG."""

from __future__ import annotations

import argparse

from . import NAMES, save_samples_grid


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dicache.zoo")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grid", help="sample each class and write a PNG grid (rows = classes)")
    g.add_argument("name", choices=NAMES)
    g.add_argument("path")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--weights", default=None, help="a directory written by scripts/train_zoo.py --out")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    save_samples_grid(args.name, args.path, args.seed, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, weights=args.weights)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
