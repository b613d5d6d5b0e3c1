"""Microbenchmark of the C++ CPU kernels against the PyTorch reference ops.

    .venv/bin/python benchmarks/bench_cpu.py                 # both shapes, fp32 and bf16
    .venv/bin/python benchmarks/bench_cpu.py --repeat 5 --shapes 1x4096x3072 --dtypes float32

For each op, shape and dtype it prints the median wall time of the reference
(``dicache.ops.reference``) and of the C++ kernels (``backend="cpu"``), the
speedup, and the C++ kernels' effective bandwidth: the bytes the op must move
at least (each tensor read or written once) divided by its time, also as a
fraction of the bandwidth of ``buf.copy_(a)`` into a preallocated buffer
measured on the same tensors, interleaved with the ops (the practical floor on
this machine).

Ops as the engine calls them on a skipped / full call:

* ``probe_decide`` with ``P[-2]`` (``error_mode=0``): reads p, x, p_prev, p_old, writes p_prev;
* ``reconstruct`` with two residuals: reads x, R[-1], R[-2], writes out;
* ``refresh`` with the other slot: reads h, p, x, p_other, writes r_slot, p_slot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List

import torch

from dicache.ops import load_backend, reference


def median_ms(fns: Dict[str, Callable[[], None]], repeat: int, warmup: int = 2) -> Dict[str, float]:
    """Median wall time of each function in ms. The functions are timed in turn,
    round after round, so that load from other processes spreads over all of them."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_shape(shape: List[int], dtype: torch.dtype, repeat: int, cpu, compiled: bool = True) -> List[Dict]:
    torch.manual_seed(0)
    B = shape[0]
    mk = lambda: torch.randn(shape, dtype=torch.float32).to(dtype)  # noqa: E731
    p, x, p_prev, p_old, h, r_new, r_old, p_other = (mk() for _ in range(8))
    out, r_slot, p_slot, buf = (torch.empty_like(p) for _ in range(4))
    acc = torch.zeros(B)
    den = torch.full((B,), float(p.numel()))
    sums = torch.zeros(B, reference.NUM_SUMS)
    flag = torch.zeros(1, dtype=torch.int32)
    gamma = torch.full((B,), 1.2)
    tensor_bytes = p.numel() * p.element_size()


    def probe(impl):
        return lambda: impl(p, x, p_prev, p_old, None, acc, den, sums, flag, gamma, 0.1, 1.0, 1.5, 0, 0)

    ops = {
        # name: (callable factory, tensor passes that must cross memory)
        "probe_decide": (probe, 5),
        "reconstruct": (lambda impl: lambda: impl(x, r_new, r_old, gamma, out), 4),
        "refresh": (lambda impl: lambda: impl(h, p, x, r_slot, p_slot, p_other, den, acc), 6),
    }
    rows = []
    for name, (factory, passes) in ops.items():
        fns = {
            "copy": lambda: buf.copy_(p),
            "reference": factory(getattr(reference, name)),
            "cpu": factory(getattr(cpu, name)),
        }
        if compiled:  # the reference composition fused by inductor (compiled during the warm-up runs)
            fns["compiled"] = factory(torch.compile(getattr(reference, name), dynamic=False))
        ms = median_ms(fns, repeat)
        ref_ms, cpu_ms, copy_ms = ms["reference"], ms["cpu"], ms["copy"]
        comp_ms = ms.get("compiled", float("nan"))
        gbs = passes * tensor_bytes / cpu_ms / 1e6
        copy_gbs = 2 * tensor_bytes / copy_ms / 1e6
        rows.append(
            {
                "op": name,
                "shape": "x".join(map(str, shape)),
                "dtype": str(dtype).replace("torch.", ""),
                "reference_ms": round(ref_ms, 2),
                "cpu_ms": round(cpu_ms, 2),
                "speedup": round(ref_ms / cpu_ms, 2),
                "compiled_ms": round(comp_ms, 2),
                "speedup_vs_compiled": round(comp_ms / cpu_ms, 2),
                "cpu_GBps": round(gbs, 1),
                "copy_ms": round(copy_ms, 2),
                "copy_GBps": round(copy_gbs, 1),
                "fraction_of_copy_bw": round(gbs / copy_gbs, 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["1x4096x3072", "1x32760x1536"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per measurement (median)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    args = parser.parse_args()

    start = time.perf_counter()
    cpu = load_backend("cpu")  # builds the extension on first use
    print(f"C++ CPU kernels ready in {time.perf_counter() - start:.1f} s; torch threads: {torch.get_num_threads()}")
    header = (f"{'op':<13} {'shape':<13} {'dtype':<9} {'ref ms':>8} {'compiled':>8} {'cpu ms':>8} {'speedup':>8} "
              f"{'vs comp':>8} {'GB/s':>6} {'copy GB/s':>9} {'of copy':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for s in args.shapes:
        shape = [int(v) for v in s.split("x")]
        for d in args.dtypes:
            for r in bench_shape(shape, getattr(torch, d), args.repeat, cpu, compiled=not args.no_compile):
                rows.append(r)
                print(
                    f"{r['op']:<13} {r['shape']:<13} {r['dtype']:<9} {r['reference_ms']:>8.2f} {r['compiled_ms']:>8.2f} "
                    f"{r['cpu_ms']:>8.2f} {r['speedup']:>7.1f}x {r['speedup_vs_compiled']:>7.1f}x {r['cpu_GBps']:>6.1f} "
                    f"{r['copy_GBps']:>9.1f} {r['fraction_of_copy_bw']:>7.2f}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
