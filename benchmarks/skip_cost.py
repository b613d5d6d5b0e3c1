"""What a skipped call costs, against a full call, on a Flux-class model of realistic width.

    python benchmarks/skip_cost.py [--width 1024] [--tokens 1024] [--repeats 5] [--backend auto]

Random weights (timing only). For DiCache and for diffusers' FirstBlockCache on
the same model, a call sequence is run in which every call after the warm-up
is skipped (a huge threshold); each call is timed, and within it:

* the blocks that really run (forward pre/post hooks on every block's inner
  modules, so a hooked block that hands its inputs on counts as not run),
* for DiCache, the cache arithmetic (the engine's ``after_probe`` on a skipped
  call: the fused probe statistics, decision, one flag read and the
  reconstruction),
* the rest: embedding, output head and framework overhead (hooks, Python).

The ideal skipped call costs ``m/M`` of the blocks plus the non-block part of a
full call. Prints a markdown table; medians over ``--repeats`` sequences.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch

import dicache


def make_model(width: int, heads: int, layers: int, single_layers: int):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    head_dim = width // heads  # rotary axes must add up to the head dim (Flux: 16 + 56 + 56 = 128)
    axes = (head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=layers, num_single_layers=single_layers,
        attention_head_dim=width // heads, num_attention_heads=heads, joint_attention_dim=256,
        pooled_projection_dim=128, guidance_embeds=True, axes_dims_rope=axes,
    ).eval()


def make_inputs(tokens: int, text_tokens: int = 64):
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(1, tokens, 64, generator=g),
        encoder_hidden_states=torch.randn(1, text_tokens, 256, generator=g),
        pooled_projections=torch.randn(1, 128, generator=g),
        img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text_tokens, 3),
        guidance=torch.full((1,), 3.5), return_dict=False,
    )


class BlockTimer:
    """Wall time of each block call (hooks on the blocks themselves, outside any cache's forward)."""

    def __init__(self, model):
        self.times = []
        self._t0: Dict[int, float] = {}
        self._handles = []
        for attr in ("transformer_blocks", "single_transformer_blocks"):
            for block in getattr(model, attr):
                self._handles.append(block.register_forward_pre_hook(self._pre))
                self._handles.append(block.register_forward_hook(self._post))

    def _pre(self, mod, args):
        self._t0[id(mod)] = time.perf_counter()

    def _post(self, mod, args, out):
        self.times.append(time.perf_counter() - self._t0.pop(id(mod)))

    def remove(self):
        for h in self._handles:
            h.remove()


def time_calls(model, inputs, n_calls: int) -> List[Dict[str, object]]:
    """Run a trajectory of ``n_calls`` (timestep going down); per call: total and per-block seconds."""
    timer = BlockTimer(model)
    rows = []
    try:
        with torch.no_grad():
            for i in range(n_calls):
                t = torch.full((1,), 1.0 - i / n_calls)
                timer.times = []
                t0 = time.perf_counter()
                with model.cache_context("cond"):  # as a pipeline calls it (FirstBlockCache needs one)
                    model(timestep=t, **inputs)
                rows.append({"total": time.perf_counter() - t0, "blocks": list(timer.times)})
    finally:
        timer.remove()
    return rows


def spy_arithmetic(model) -> List[float]:
    """Seconds spent in DiCache's after_probe on each call (decision + reconstruction)."""
    engine = dicache.hooks.session_of(model).engine
    spent: List[float] = []
    inner = engine.after_probe

    def timed(x, p):
        t0 = time.perf_counter()
        out = inner(x, p)
        spent.append(time.perf_counter() - t0)
        return out

    engine.after_probe = timed
    return spent


def measure(model, inputs, setup: Callable, teardown: Callable, first_skip: int, n_calls: int, repeats: int,
            probe_depth: int = 1, arithmetic: bool = False):
    """Medians over the calls from ``first_skip`` on (all skipped): total, probe blocks, handing-on blocks,
    cache arithmetic."""
    total, probe, tail, arith = [], [], [], []
    for _ in range(repeats):
        setup(model)
        spent = spy_arithmetic(model) if arithmetic else None
        rows = time_calls(model, inputs, n_calls)
        teardown(model)
        for i, r in enumerate(rows[first_skip:], start=first_skip):
            a = spent[i] if spent is not None else 0.0
            total.append(r["total"])
            probe.append(sum(r["blocks"][:probe_depth]) - a)  # the probe hook runs inside block m-1's call
            tail.append(sum(r["blocks"][probe_depth:]))
            arith.append(a)
    med = statistics.median
    return dict(total=med(total), probe=med(probe), tail=med(tail), arithmetic=med(arith) if arithmetic else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--single-layers", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args(argv)

    model = make_model(args.width, args.heads, args.layers, args.single_layers)
    inputs = make_inputs(args.tokens)
    M = args.layers + args.single_layers
    warm, n_calls = 3, 8

    # the uncached model: full calls, per block
    full_total, full_blocks = [], []
    for _ in range(args.repeats):
        for r in time_calls(model, inputs, n_calls)[1:]:
            full_total.append(r["total"])
            full_blocks.append(r["blocks"])
    full = statistics.median(full_total)
    block_med = [statistics.median(b[i] for b in full_blocks) for i in range(M)]
    per_block = sum(block_med) / M
    non_block = full - sum(block_med)  # embedding, output head, the model's own glue

    results = {}

    def dicache_on(m):
        dicache.enable(m, backend=args.backend, threshold=1e9, warmup=warm, probe_depth=1)

    results[f"DiCache (m=1, backend={args.backend})"] = measure(
        model, inputs, dicache_on, dicache.disable, warm, n_calls, args.repeats, arithmetic=True)

    from diffusers.hooks import FirstBlockCacheConfig

    results["diffusers FirstBlockCache"] = measure(
        model, inputs, lambda m: m.enable_cache(FirstBlockCacheConfig(threshold=1e9)), lambda m: m.disable_cache(),
        2, n_calls, args.repeats)

    ideal = non_block + block_med[0]
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"model: Flux-class, width {args.width}, {M} blocks ({args.layers} double), {args.tokens} image tokens "
          f"+ 64 text, fp32, random weights; medians over {args.repeats} runs of {n_calls} calls")
    print(f"full call {1e3 * full:.1f} ms: blocks {1e3 * sum(block_med):.1f} ms (mean {1e3 * per_block:.1f} ms, "
          f"block 0 {1e3 * block_med[0]:.1f} ms), rest {1e3 * non_block:.1f} ms")
    print(f"ideal skipped call (block 0 + rest): {1e3 * ideal:.1f} ms = {ideal / full:.3f} of a full call "
          f"(m/M = {1 / M:.3f})\n")
    print("| method | skipped call ms | skipped / full | ideal / full | probe block ms | cache arithmetic ms "
          "| handing-on blocks ms | other overhead ms | (arithmetic + overhead) / mean block |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        arith = r["arithmetic"] or 0.0
        other = r["total"] - r["probe"] - arith - r["tail"] - non_block
        overhead = arith + r["tail"] + other
        a = "–" if r["arithmetic"] is None else f"{1e3 * arith:.2f}"
        print(f"| {name} | {1e3 * r['total']:.1f} | {r['total'] / full:.3f} | {ideal / full:.3f} | "
              f"{1e3 * r['probe']:.1f} | {a} | {1e3 * r['tail']:.2f} | {1e3 * other:.2f} | "
              f"{100 * overhead / per_block:.1f}% |")


if __name__ == "__main__":
    main()
