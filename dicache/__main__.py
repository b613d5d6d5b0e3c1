"""Command line: ``python -m dicache demo --out DIR`` (also installed as the ``dicache`` script)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .ops import BACKENDS


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dicache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="DiCache on the shipped models against the uncached output; writes PNGs")
    demo.add_argument("--out", required=True, help="output directory for the side-by-side PNGs and the table")
    demo.add_argument("--backend", default="auto", choices=BACKENDS)
    demo.add_argument("--steps", type=int, default=None, help="denoising steps (default: each model's own)")
    demo.add_argument("--repeats", type=int, default=2,
                      help="timed runs per method; the median is reported (benchmarks/quality.py is the careful one)")
    demo.add_argument("--model", action="append", default=None, help="a shipped model name (repeatable)")
    info = sub.add_parser("info", help="backends available here and what the compiled extension built")
    del info
    args = parser.parse_args(argv)

    if args.command == "demo":
        from . import demo as demo_mod
        from . import zoo

        models = args.model or list(zoo.NAMES)
        unknown = [m for m in models if m not in zoo.NAMES]
        if unknown:
            parser.error(f"--model must be one of {', '.join(zoo.NAMES)}, got {', '.join(unknown)}")
        demo_mod.main(args.out, backend=args.backend, models=models, steps=args.steps, repeats=args.repeats)
        return 0
    if args.command == "info":
        from . import build_info
        from .ops import availability

        for name, why in availability("cpu").items():
            print(f"{name:>7}: {'available on cpu' if why is None else why}")
        try:
            print(build_info())
        except ImportError as exc:  # the build module is optional
            print(f"build info unavailable: {exc}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
