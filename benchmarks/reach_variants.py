#!/usr/bin/env python
"""Which calls ``quad_reach`` changes: ``run_options.py`` with its reach test replaced by a variant, for a study.

``quad_reach`` takes the line through the two newest entries, not the quadratic through three, for a call further
past the newest entry than the shorter of the entries' two spacings (:func:`dicache.state.within_reach`). This
script swaps that test (``dicache.engine.within_reach``, in this process only) for one of :data:`VARIANTS` and runs
``benchmarks/run_options.py`` with the remaining arguments; the option sets must turn ``quad_reach`` on:

    .venv/bin/python benchmarks/reach_variants.py newest wan_digits 50 '{"threshold": 0.16, "quad_reach": true}' \\
        --seeds 0,1,2,3 --threads 1
    .venv/bin/python benchmarks/reach_variants.py after_warmup cogvideox_digits 20 '{"threshold": 0.4, "quad_reach": true}'
    .venv/bin/python benchmarks/reach_variants.py newest flux_digits 50 \\
        '{"threshold": 0.79, "quad_reach": true, "quad_reach_blend": 0.5}'

A variant that scores the option's own PSNR on a run changed no call there that the option changes. With
``quad_reach_blend`` in the option sets, a call the variant puts beyond the reach takes that blend of the line and the
quadratic, as under the option's own test.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Dict, Iterator, List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))

import dicache.engine  # noqa: E402
from dicache.config import QUAD_REACH_SPACED  # noqa: E402
from dicache.state import reach_tested, within_reach  # noqa: E402


def _newest(t0: int, t1: int, t2: int, step: int) -> bool:
    """The line only past a close pair at the newest end (entries 10, 12, 13: a call computed out of step)."""
    return not (t2 - t1 < t1 - t0 and step - t2 > t2 - t1)


def _longer(t0: int, t1: int, t2: int, step: int) -> bool:
    """The reach is the longer of the two spacings."""
    return step - t2 <= max(t1 - t0, t2 - t1)


def _after_warmup(t0: int, t1: int, t2: int, step: int) -> bool:
    """The option's rule, except through two entries of neighbouring steps (the warm-up's: 1, 2, 4 or 0, 1, 4): the
    rule of ``quad_reach="spaced"``."""
    return not reach_tested(QUAD_REACH_SPACED, t0, t1) or within_reach(t0, t1, t2, step)


#: name → the test ``(t0, t1, t2, step) -> True`` where the quadratic through the entries at ``t0 < t1 < t2`` is
#: taken at ``step`` (False: the line); "shorter" is the option's own rule.
VARIANTS: Dict[str, Callable[[int, int, int, int], bool]] = {
    "shorter": within_reach, "newest": _newest, "longer": _longer, "after_warmup": _after_warmup}


@contextlib.contextmanager
def reach_variant(name: str) -> Iterator[None]:
    """The engine's reach test replaced by ``VARIANTS[name]`` while the block runs."""
    if name not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {name!r}")
    saved = dicache.engine.within_reach
    dicache.engine.within_reach = VARIANTS[name]
    try:
        yield
    finally:
        dicache.engine.within_reach = saved


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + f"\nvariants: {', '.join(VARIANTS)}")
        return 0 if argv else 2
    import run_options

    with reach_variant(argv[0]):
        return run_options.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
