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
    """Wall time spent inside the blocks' own computation (their first-level submodules)."""

    def __init__(self, model):
        self.total = 0.0
        self._t0: Dict[int, float] = {}
        self._handles = []
        for attr in ("transformer_blocks", "single_transformer_blocks"):
            for block in getattr(model, attr):
                for sub in block.children():
                    self._handles.append(sub.register_forward_pre_hook(self._pre))
                    self._handles.append(sub.register_forward_hook(self._post))

    def _pre(self, mod, args):
        self._t0[id(mod)] = time.perf_counter()

    def _post(self, mod, args, out):
        self.total += time.perf_counter() - self._t0.pop(id(mod))

    def remove(self):
        for h in self._handles:
            h.remove()


def time_calls(model, inputs, n_calls: int) -> List[Dict[str, float]]:
    """Run a trajectory of ``n_calls`` (timestep going down); per call: total and in-block seconds."""
    timer = BlockTimer(model)
    rows = []
    try:
        with torch.no_grad():
            for i in range(n_calls):
                t = torch.full((1,), 1.0 - i / n_calls)
                timer.total = 0.0
                t0 = time.perf_counter()
                with model.cache_context("cond"):  # as a pipeline calls it (FirstBlockCache needs one)
                    model(timestep=t, **inputs)
                rows.append({"total": time.perf_counter() - t0, "blocks": timer.total})
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


def measure(model, inputs, setup: Callable, teardown: Callable, warm: int, n_calls: int, repeats: int,
            arithmetic: bool = False):
    fulls, skips, blocks_full, blocks_skip, arith = [], [], [], [], []
    for _ in range(repeats):
        setup(model)
        spent = spy_arithmetic(model) if arithmetic else None
        rows = time_calls(model, inputs, n_calls)
        teardown(model)
        fulls += [r["total"] for r in rows[1:warm]]
        blocks_full += [r["blocks"] for r in rows[1:warm]]
        skips += [r["total"] for r in rows[warm:]]
        blocks_skip += [r["blocks"] for r in rows[warm:]]
        if spent is not None:
            arith += spent[warm:]
    med = lambda v: statistics.median(v) if v else float("nan")  # noqa: E731
    return dict(full=med(fulls), skip=med(skips), blocks_full=med(blocks_full), blocks_skip=med(blocks_skip),
                arithmetic=med(arith) if arith else float("nan"))


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

    plain = measure(model, inputs, lambda m: None, lambda m: None, n_calls, n_calls, args.repeats)
    per_block = plain["blocks_full"] / M
    non_block = plain["full"] - plain["blocks_full"]
    results = {"no cache (full call)": dict(plain, skip=float("nan"), blocks_skip=float("nan"))}

    def dicache_on(m):
        dicache.enable(m, backend=args.backend, threshold=1e9, warmup=warm, probe_depth=1)

    results[f"DiCache (m=1, backend={args.backend})"] = measure(
        model, inputs, dicache_on, dicache.disable, warm, n_calls, args.repeats, arithmetic=True)

    try:
        from diffusers.hooks import FirstBlockCacheConfig

        def fbc_on(m):
            m.enable_cache(FirstBlockCacheConfig(threshold=1e9))

        results["diffusers FirstBlockCache"] = measure(
            model, inputs, fbc_on, lambda m: m.disable_cache(), 1 + 1, n_calls, args.repeats)
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        print(f"FirstBlockCache could not run: {exc}")

    ideal_skip = non_block + per_block * 1
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"model: Flux-class, width {args.width}, {M} blocks, {args.tokens} image tokens + 64 text, fp32")
    print(f"one block: {1e3 * per_block:.1f} ms; non-block part of a call: {1e3 * non_block:.1f} ms; "
          f"ideal skipped call (probe of 1 block): {1e3 * ideal_skip:.1f} ms = {ideal_skip / plain['full']:.3f} "
          f"of a full call (m/M = {1 / M:.3f})\n")
    print("| method | full call ms | skipped call ms | skipped / full | blocks run in a skip ms "
          "| cache arithmetic ms | overhead ms | (arithmetic + overhead) / block |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        if r["skip"] != r["skip"]:  # nan: no skipped calls
            print(f"| {name} | {1e3 * r['full']:.1f} | – | – | – | – | – | – |")
            continue
        arith = 0.0 if r["arithmetic"] != r["arithmetic"] else r["arithmetic"]
        overhead = r["skip"] - r["blocks_skip"] - arith - non_block
        extra = (arith + overhead) / per_block
        a = "–" if r["arithmetic"] != r["arithmetic"] else f"{1e3 * arith:.2f}"
        print(f"| {name} | {1e3 * r['full']:.1f} | {1e3 * r['skip']:.1f} | {r['skip'] / r['full']:.3f} | "
              f"{1e3 * r['blocks_skip']:.1f} | {a} | {1e3 * overhead:.2f} | {100 * extra:.1f}% |")


if __name__ == "__main__":
    main()
