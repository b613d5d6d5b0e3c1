"""``python -m dicache demo --out DIR``: DiCache on the shipped models, against the uncached output."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from . import api, zoo
from .metrics import psnr, ssim

# What the demo samples: every digit as an image, two of them as videos.
LABELS = {"flux_digits": tuple(range(10)), "wan_digits": (0, 1), "hunyuan_digits": (0, 1), "sd3_digits": tuple(range(10)),
          "cogvideox_digits": (0, 1)}


@dataclass(frozen=True)
class DemoRow:
    model: str
    method: str
    blocks_computed: float  # fraction of the uncached model's block evaluations
    seconds: float
    speedup: float
    psnr: float
    ssim: float


def _generate(pipe, name: str, labels: Sequence[int], seed: int, steps: Optional[int], repeats: int):
    """Sample through the pipeline; returns (images in [0, 1], median wall time over ``repeats`` runs)."""
    times = []
    for _ in range(repeats):
        kwargs = zoo.pipeline_call_kwargs(name, labels, seed=seed, num_inference_steps=steps)
        t0 = time.perf_counter()
        latents = pipe(**kwargs)[0]
        times.append(time.perf_counter() - t0)
    times.sort()
    return zoo.images(name, pipe, latents, kwargs), times[len(times) // 2]


def run_model(name: str, out_dir: str, backend: str = "auto", seed: int = 0, steps: Optional[int] = None,
              repeats: int = 2, labels: Optional[Sequence[int]] = None, **options) -> List[DemoRow]:
    """Uncached and DiCache (``dicache.enable(pipe)``'s default: the family preset, or ``options``) on one shipped
    model; writes a PNG.

    The PNG has three rows of samples: uncached, DiCache, and 4× their absolute difference
    (for videos: three videos per block of rows, frames across).
    """
    labels = LABELS[name] if labels is None else labels
    pipe = zoo.pipeline(name, zoo.load(name))
    from .ops import select_backend

    select_backend(backend, next(pipe.transformer.parameters()).device)  # build/load kernels before timing
    base, t_base = _generate(pipe, name, labels, seed, steps, repeats)
    api.enable(pipe, backend=backend, **options)
    try:
        cached, t_cached = _generate(pipe, name, labels, seed, steps, repeats)
        s = api.summary(pipe)
    finally:
        api.disable(pipe)
    rows = [
        DemoRow(name, "no cache", 1.0, t_base, 1.0, float("inf"), 1.0),
        DemoRow(name, f"DiCache ({s.backend}, {s.rule})", 1.0 - s.saved_fraction, t_cached,
                t_base / t_cached, psnr(cached, base), ssim(cached, base)),
    ]
    # side by side: uncached | DiCache | 4×|difference|, one row of samples each
    diff = ((cached - base).abs() * 4).clamp(0, 1)
    grid = torch.cat([base, cached, diff])
    nrow = len(labels) if base.dim() == 3 else None
    zoo.save_grid(grid, os.path.join(out_dir, f"{name}_dicache.png"), nrow=nrow)
    print(s)
    return rows


def format_table(rows: List[DemoRow]) -> str:
    w = max([len("model")] + [len(r.model) for r in rows])
    wm = max([30] + [len(r.method) for r in rows])
    head = f"{'model':<{w}} {'method':<{wm}} {'blocks computed':>15} {'wall s':>8} {'speedup':>8} {'PSNR dB':>8} {'SSIM':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        p = "inf" if r.psnr == float("inf") else f"{r.psnr:.2f}"
        lines.append(
            f"{r.model:<{w}} {r.method:<{wm}} {100 * r.blocks_computed:>14.1f}% {r.seconds:>8.3f} {r.speedup:>7.2f}× "
            f"{p:>8} {r.ssim:>6.3f}"
        )
    return "\n".join(lines)


def main(out_dir: str, backend: str = "auto", models: Sequence[str] = zoo.NAMES, steps: Optional[int] = None,
         repeats: int = 2) -> List[DemoRow]:
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)  # the shipped models are tiny: one thread beats two (thread overhead)
    rows: List[DemoRow] = []
    for name in models:
        rows += run_model(name, out_dir, backend=backend, steps=steps, repeats=repeats)
    table = format_table(rows)
    print()
    print(table)
    with open(os.path.join(out_dir, "demo.txt"), "w") as f:
        f.write(table + "\n")
    print(f"\nwrote {', '.join(os.path.join(out_dir, f'{n}_dicache.png') for n in models)}")
    return rows
