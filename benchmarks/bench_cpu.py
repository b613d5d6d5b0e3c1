"""Microbenchmark of the fused cache ops on CPU: every implementation available here against
the PyTorch reference in eager mode and under ``torch.compile``, and against a plain copy.

    .venv/bin/python benchmarks/bench_cpu.py                          # every default shape, fp32 and bf16
    .venv/bin/python benchmarks/bench_cpu.py --shapes 1x256x3072 --dtypes float32 --repeat 5   # smoke
    .venv/bin/python benchmarks/bench_cpu.py --md ops.md --json ops.json
    .venv/bin/python benchmarks/bench_cpu.py --plan --shapes 2x75600x5120   # estimated peak memory only

Default shapes ``[B, N, C]``: two small ones (``1x256x3072``; ``1x1000x1536``, a token count that
is no multiple of any vector width or thread chunk), Flux at 1024² (``1x4096x3072``), Wan 1.3B at
480p (``1x32760x1536``) and Wan 14B at 720p with CFG (``2x75600x5120``: 774 M elements, 3.1 GB per
fp32 tensor, 1.55 GB per bf16 tensor).

For each op × shape × dtype, these variants are timed in turn, round after round (so that load
from other processes spreads over all of them), and the median is reported:

* ``copy``      — ``dst.copy_(src)`` between two of the op's tensors: the machine's practical
                  bandwidth, measured in the same rounds (read + write = 2 tensor passes);
* ``eager``     — :mod:`dicache.ops.reference` (the specification) in eager mode;
* ``compiled``  — the same reference under ``torch.compile`` (inductor fuses it);
* ``torch``     — the ``torch`` backend: the very same functions as ``eager`` (not timed twice);
* ``cpu``       — the C++ kernels (``backend="cpu"``, built on first use);
* ``triton``/``cuda`` — listed with the reason they cannot be timed here.

**GB/s** is the fewest bytes the op must move (:func:`bench_triton.min_bytes`: each big tensor
read or written once, plus the small state) divided by the time; **of copy** is that over the copy
bandwidth of the same rounds. A copy is not a perfect ceiling: its write stream costs a read for
ownership on x86, while the ops mostly read, so a fused op can exceed 1.0. Where the op's tensors
fit the last-level cache (on the 300 MiB-L3 VM of RESULTS.md: the small shapes and, at 50 MB per
fp32 tensor, partly the Flux shape) the rates are cache rates, not DRAM rates.

**Memory.** Before the tensors of a large shape (over ``--estimate-above`` elements) are allocated,
each variant's peak is estimated: the op's own tensors plus its temporaries, measured per element
with the profiler's allocator records on a ``1x512x1024`` shape and scaled (the eager reference
makes fp32 temporaries: 2 tensors' worth for fp32 ``probe_decide``, 3 for ``reconstruct``, 6 for
bf16; the C++ kernels and the compiled reference none). A variant whose estimate exceeds the memory
available at that moment less ``--mem-margin-gb`` is not run; its row says what it would need and
what there is. ``--plan`` prints the estimates without allocating anything big.

**Repeats.** ``--repeat`` rounds (default 20), fewer where one round would take long: the rounds
are capped so that one op × shape × dtype takes about ``--budget-s`` (30) seconds, but never fewer
than ``--min-repeat`` (3).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_triton import Case, min_bytes  # noqa: E402  (the byte accounting shared with the GPU benchmark)

from dicache.ops import BackendUnavailableError, availability, load_backend, reference  # noqa: E402

SMALL_SHAPES = ("1x256x3072", "1x1000x1536")
FLUX_SHAPE = "1x4096x3072"  # Flux at 1024x1024: 64x64 latent patches of 2x2, width 3072
WAN_SHAPE = "1x32760x1536"  # Wan 1.3B, 480p, 81 frames: 21 x 30 x 52 tokens, width 1536
BIG_SHAPE = "2x75600x5120"  # Wan 14B, 720p, 81 frames, CFG batched: 21 x 45 x 80 tokens, width 5120
DEFAULT_SHAPES = SMALL_SHAPES + (FLUX_SHAPE, WAN_SHAPE, BIG_SHAPE)
OPS = ("probe_decide", "reconstruct", "refresh")
VARIANTS = ("copy", "eager", "compiled", "torch", "cpu", "triton", "cuda")
TIMED = ("copy", "eager", "compiled", "cpu")

# The big tensors of each op, in the order the call takes them; "copy" copies ROLES[op][0] into COPY_DST[op].
ROLES: Dict[str, Tuple[str, ...]] = {
    "probe_decide": ("p", "x", "p_prev", "p_old"),
    "reconstruct": ("x", "r_new", "r_old", "out"),
    "refresh": ("h", "p", "x", "r_slot", "p_slot", "p_other"),
}
COPY_DST = {"probe_decide": "p_prev", "reconstruct": "out", "refresh": "r_slot"}
GiB = 1024**3


def parse_shape(text: str) -> Tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def shape_label(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def dtype_label(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


# ---------------------------------------------------------------------------
# inputs and calls


class State:
    """The small per-sample state the ops read and write (fp32 / int32, [B] or [B, 5])."""

    def __init__(self, batch: int, numel_per_sample: int):
        self.acc = torch.zeros(batch)
        self.den = torch.full((batch,), float(numel_per_sample))
        self.sums = torch.zeros(batch, reference.NUM_SUMS)
        self.flag = torch.zeros(1, dtype=torch.int32)
        self.gamma = torch.full((batch,), 1.2)

    def clone(self) -> "State":
        other = State.__new__(State)
        for k, v in vars(self).items():
            setattr(other, k, v.clone())
        return other


def call(impl, op: str, t: Dict[str, torch.Tensor], s: State) -> Callable[[], None]:
    """A no-argument callable running ``impl.<op>`` (or ``impl`` itself when callable) on tensors ``t``."""
    fn = impl if callable(impl) else getattr(impl, op)
    if op == "probe_decide":
        return lambda: fn(t["p"], t["x"], t["p_prev"], t["p_old"], None, s.acc, s.den, s.sums, s.flag, s.gamma,
                          0.1, 1.0, 1.5, reference.POLICY_GLOBAL, reference.ERROR_PROBE)
    if op == "reconstruct":
        return lambda: fn(t["x"], t["r_new"], t["r_old"], s.gamma, t["out"])
    if op == "refresh":
        return lambda: fn(t["h"], t["p"], t["x"], t["r_slot"], t["p_slot"], t["p_other"], s.den, s.acc)
    raise ValueError(f"unknown op {op!r}")


def random_tensors(shape, dtype, names: Sequence[str], seed: int = 0) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.empty(shape, dtype=dtype).normal_(generator=gen) for n in names}


class Pool:
    """Big tensors of one shape and dtype, filled once and shared by the ops (an op takes as many as it
    has roles; different ops run at different times, so sharing is harmless)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype
        self.tensors: List[torch.Tensor] = []
        self._gen = torch.Generator().manual_seed(0)

    @property
    def tensor_bytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()

    def take(self, op: str) -> Dict[str, torch.Tensor]:
        roles = ROLES[op]
        while len(self.tensors) < len(roles):
            self.tensors.append(torch.empty(self.shape, dtype=self.dtype).normal_(generator=self._gen))
        return dict(zip(roles, self.tensors))

    def release(self) -> None:
        self.tensors.clear()


def _compiled_ops() -> Dict[str, Callable]:
    """The reference ops under torch.compile, fresh (one compilation per shape and dtype)."""
    import torch._dynamo

    torch._dynamo.reset()
    return {op: torch.compile(getattr(reference, op), dynamic=False) for op in OPS}


def raise_recompile_limit() -> None:
    """Every shape × dtype compiles the same reference functions anew; dynamo's default limit (8)
    would silently fall back to eager after eight of them."""
    import torch._dynamo.config as cfg

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 64))


# Tolerances of check_against_reference: stored tensors about one unit of their dtype (fp32
# arithmetic rounded once), per-sample sums and what derives from them a relative 1e-4 (the order of
# the additions differs: OpenMP chunks, inductor's split reductions), copies and the flag exactly.
ELEMENTWISE_TOL = {torch.float32: (1.2e-7, 1e-6), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}
SUMS_RTOL = 1e-4
EXACT = ("p_prev", "flag")


def check_against_reference(impl, op: str, shape, dtype, seed: int = 3) -> List[str]:
    """Run ``impl`` and :mod:`dicache.ops.reference` once on copies of the same random inputs and
    compare every output; returns the mismatches (empty when they agree)."""
    t = random_tensors(shape, dtype, ROLES[op], seed=seed)
    for name in ("out", "r_slot", "p_slot"):  # written only: poison, so that an unwritten element shows up
        if name in t:
            t[name].fill_(float("nan"))
    s = State(shape[0], math.prod(shape[1:]))
    t2 = {k: v.clone() for k, v in t.items()}
    s2 = s.clone()
    call(impl, op, t, s)()
    call(reference, op, t2, s2)()
    bad = []
    rtol, atol = ELEMENTWISE_TOL.get(dtype, (1e-3, 1e-3))
    for name in t:
        got, want = t[name], t2[name]
        ok = torch.equal(got, want) if name in EXACT else torch.allclose(
            got.float(), want.float(), rtol=rtol, atol=atol, equal_nan=False)
        if not ok:
            bad.append(f"{name}: max |diff| {(got.float() - want.float()).abs().max().item():.3g}")
    for name, want in vars(s2).items():
        got = getattr(s, name)
        if name in EXACT:
            ok = torch.equal(got, want)
        else:
            ok = torch.allclose(got, want, rtol=SUMS_RTOL, atol=1e-5, equal_nan=True)
        if not ok:
            bad.append(f"{name}: {got.tolist()} vs reference {want.tolist()}")
    return bad


# ---------------------------------------------------------------------------
# memory


def available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil ships with the test/bench environments
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"]


def total_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_extra_bytes(fn: Callable[[], None]) -> int:
    """The highest total of live allocations ``fn`` makes beyond its inputs: the profiler's raw memory
    records (every allocation and free of the CPU allocator, compiled graphs' own buffers included),
    summed in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
    cur = peak = 0
    for e in records:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


_EXTRA_PER_ELEMENT: Dict[Tuple[str, str, torch.dtype], float] = {}
_PROBE_SHAPE = (1, 512, 1024)


def extra_bytes_per_element(variant: str, op: str, dtype: torch.dtype, impls: Dict[str, object]) -> float:
    """Temporaries of one call of ``variant`` per element of the op's tensors (measured once, cached)."""
    key = (variant, op, dtype)
    if key not in _EXTRA_PER_ELEMENT:
        if variant == "copy":
            extra = 0
        else:
            t = random_tensors(_PROBE_SHAPE, dtype, ROLES[op], seed=1)
            s = State(1, math.prod(_PROBE_SHAPE[1:]))
            if variant == "compiled":
                impl = torch.compile(getattr(reference, op), dynamic=False)
            else:
                impl = impls[variant]
            fn = call(impl, op, t, s)
            fn()  # compile / first-use work outside the measurement
            extra = peak_extra_bytes(fn)
        _EXTRA_PER_ELEMENT[key] = extra / math.prod(_PROBE_SHAPE)
    return _EXTRA_PER_ELEMENT[key]


def fmt_gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e9:.2f} GB"


# ---------------------------------------------------------------------------
# timing


def median_ms(fns: Dict[str, Callable[[], None]], repeat: int, min_repeat: int = 3, budget_s: float = 30.0,
              warmup: int = 2) -> Tuple[Dict[str, float], Dict[str, float], int]:
    """Median wall time of each function in ms, and the interquartile range (ms), and the rounds run.

    The functions are timed in turn, round after round. Warm-up: ``warmup`` calls each (the first
    compiles where needed), one call for functions that take over a second (two for ``"compiled"``,
    whose first call includes compilation). The number of rounds is
    ``repeat``, lowered so that all rounds together take about ``budget_s``, but at least ``min_repeat``.
    """
    round_s = 0.0
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        # a second warm-up call where the first was short, or included compilation
        extra = warmup - 1 if dt < 1.0 else (1 if name == "compiled" else 0)
        for _ in range(extra):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        round_s += dt
    rounds = max(min_repeat, min(repeat, int(budget_s / max(round_s, 1e-9))))
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    med = {name: statistics.median(t) for name, t in times.items()}
    iqr = {}
    for name, t in times.items():
        q = statistics.quantiles(t, n=4) if len(t) >= 2 else [t[0]] * 3
        iqr[name] = q[2] - q[0]
    return med, iqr, rounds


def unavailable_reasons() -> Dict[str, str]:
    """Why triton and cuda are not timed here."""
    why = availability("cpu")
    out = {}
    t = why.get("triton")
    interp = "timing under the Triton interpreter is not meaningful (it runs each program in Python)"
    out["triton"] = f"{t}; {interp}" if t else f"runs only under the interpreter here: {interp}"
    out["cuda"] = why.get("cuda") or "no CUDA device"
    return out


def bench_group(op: str, shape, dtype, pool: Pool, impls: Dict[str, object], args, reasons: Dict[str, str],
                compiled: Optional[Dict[str, Callable]]) -> List[Dict]:
    """All variants of one op × shape × dtype: one row each."""
    numel = math.prod(shape)
    tb = pool.tensor_bytes
    resident = len(ROLES[op]) * tb  # the pool may hold more: counted in the available memory below
    nbytes = min_bytes(Case(op, tuple(shape), dtype))
    base = {"op": op, "shape": shape_label(shape), "dtype": dtype_label(dtype), "min_bytes": nbytes}
    rows: Dict[str, Dict] = {}

    def row(variant, **kw):
        rows[variant] = {**base, "variant": variant, "ms": None, "iqr_ms": None, "GBps": None,
                         "of_copy": None, "vs_eager": None, "vs_compiled": None, "rounds": None, "note": "", **kw}

    # what fits: the pool's tensors already live in memory, so "available" is after them
    have_pool = len(pool.tensors) * tb
    need_new = max(0, len(ROLES[op]) - len(pool.tensors)) * tb
    avail = available_bytes() - args.mem_margin_gb * GiB
    candidates = [v for v in TIMED
                  if v == "copy" or (v == "compiled" and compiled is not None) or (v != "compiled" and v in impls)]
    run: List[str] = []
    for v in candidates:
        extra = 0.0 if numel < args.estimate_above else extra_bytes_per_element(v, op, dtype, impls) * numel
        if need_new + extra > avail:
            row(v, note=(f"not run: needs ~{fmt_gb(resident + extra)} ({len(ROLES[op])} tensors of {fmt_gb(tb)} + "
                         f"~{fmt_gb(extra)} temporaries); {fmt_gb(max(0.0, avail) + have_pool)} usable (available "
                         f"memory less a {args.mem_margin_gb:g} GiB margin) of {fmt_gb(total_bytes())} in the machine"))
        else:
            run.append(v)
    if "copy" not in run:
        for v in run:
            row(v, note="not run: the op's own tensors do not fit")
        run = []

    fns: Dict[str, Callable[[], None]] = {}
    if run:
        t = pool.take(op)
        s = State(shape[0], numel // shape[0])
        for v in run:
            if v == "copy":
                src, dst = t[ROLES[op][0]], t[COPY_DST[op]]
                fns[v] = lambda src=src, dst=dst: dst.copy_(src)
            elif v == "compiled":
                fns[v] = call(compiled[op], op, t, s)
            else:
                fns[v] = call(impls[v], op, t, s)
        ms, iqr, rounds = median_ms(fns, args.repeat, args.min_repeat, args.budget_s)
        copy_gbps = 2 * tb / (ms["copy"] * 1e-3) / 1e9
        for v in run:
            gbps = (2 * tb if v == "copy" else nbytes) / (ms[v] * 1e-3) / 1e9
            row(v, ms=ms[v], iqr_ms=iqr[v], GBps=gbps, of_copy=gbps / copy_gbps, rounds=rounds)
    if "torch" not in rows:
        same = all(getattr(impls.get("torch"), o, None) is getattr(reference, o) for o in OPS)
        if same and "eager" in rows:
            r = dict(rows["eager"])
            r.update(variant="torch", note="= eager (the same functions); not timed twice")
            rows["torch"] = r
        elif "torch" in impls:
            row("torch", note="not timed")
    for v in ("cpu", "triton", "cuda"):
        if v not in rows and v not in impls:
            row(v, note=f"unavailable: {reasons.get(v, 'not loaded')}")
    # speedups
    eager = rows.get("eager", {}).get("ms")
    comp = rows.get("compiled", {}).get("ms")
    for r in rows.values():
        if r["ms"] and r["variant"] != "copy":
            r["vs_eager"] = eager / r["ms"] if eager else None
            r["vs_compiled"] = comp / r["ms"] if comp else None
    return [rows[v] for v in VARIANTS if v in rows]


# ---------------------------------------------------------------------------
# report


def _f(v, spec, suffix=""):
    return "–" if v is None else f"{v:{spec}}{suffix}"


def markdown_table(rows: List[Dict]) -> str:
    """The timed variants (and those skipped for memory); the unavailable backends go in :func:`unavailable_list`."""
    lines = ["| op | shape | dtype | variant | median ms | IQR ms | rounds | GB/s | of copy | vs eager | vs compiled | note |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if r["note"].startswith("unavailable"):
            continue
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['variant']} | {_f(r['ms'], '.3f')} | "
            f"{_f(r['iqr_ms'], '.3f')} | {_f(r['rounds'], 'd')} | {_f(r['GBps'], '.1f')} | {_f(r['of_copy'], '.2f')} | "
            f"{_f(r['vs_eager'], '.1f', '×')} | {_f(r['vs_compiled'], '.2f', '×')} | {r['note']} |")
    return "\n".join(lines)


def unavailable_list(rows: List[Dict]) -> str:
    seen = {}
    for r in rows:
        if r["note"].startswith("unavailable"):
            seen.setdefault(r["variant"], r["note"][len("unavailable: "):])
    return "\n".join(f"* `{v}` backend: not timed: {why}" for v, why in seen.items())


TARGETS = {"vs_eager": 3.0, "vs_compiled": 1.5, "of_copy": 0.70}


def target_table(rows: List[Dict], shapes=(FLUX_SHAPE, WAN_SHAPE, BIG_SHAPE)) -> str:
    """The C++ kernels against the issue's CPU targets, at the model sizes. The last column is the compiled
    reference's own fraction of the copy bandwidth: where it is already near 1, no kernel can be 1.5×
    faster than it without beating a plain copy by 1.5× (the op is at the memory floor)."""
    lines = ["| op | shape | dtype | C++ ms | vs eager (≥3×) | vs compiled (≥1.5×) | of copy BW (≥0.70) "
             "| compiled ref. of copy BW |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    by_key = {(r["op"], r["shape"], r["dtype"], r["variant"]): r for r in rows}
    for r in rows:
        if r["variant"] != "cpu" or r["shape"] not in shapes:
            continue

        def mark(key, spec, suffix=""):
            v = r[key]
            if v is None:
                return "–"
            return f"{v:{spec}}{suffix} {'✓' if v >= TARGETS[key] else '✗'}"

        comp = by_key.get((r["op"], r["shape"], r["dtype"], "compiled"), {}).get("of_copy")
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {_f(r['ms'], '.2f')} | {mark('vs_eager', '.1f', '×')} | "
                     f"{mark('vs_compiled', '.2f', '×')} | {mark('of_copy', '.2f')} | {_f(comp, '.2f')} |")
    return "\n".join(lines)


def memory_plan(shapes, dtypes, ops, impls, with_compiled: bool) -> str:
    """Each variant's estimated peak (the op's tensors + its temporaries), without allocating the shape."""
    lines = ["| op | shape | dtype | op tensors GB | " + " | ".join(f"{v} peak GB" for v in TIMED) + " |",
             "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in TIMED) + " |"]
    for s in shapes:
        shape = parse_shape(s)
        numel = math.prod(shape)
        for d in dtypes:
            dtype = getattr(torch, d)
            tb = numel * torch.empty((), dtype=dtype).element_size()
            for op in ops:
                resident = len(ROLES[op]) * tb
                cells = []
                for v in TIMED:
                    if v == "compiled" and not with_compiled or v not in ("copy", "compiled") and v not in impls:
                        cells.append("–")
                        continue
                    extra = extra_bytes_per_element(v, op, dtype, impls) * numel
                    cells.append(f"{(resident + extra) / 1e9:.2f}")
                lines.append(f"| {op} | {s} | {dtype_label(dtype)} | {resident / 1e9:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), help="BxNxC, e.g. 1x4096x3072")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    ap.add_argument("--repeat", type=int, default=20, help="timed rounds per measurement (median), at most")
    ap.add_argument("--min-repeat", type=int, default=3, help="timed rounds, at least")
    ap.add_argument("--budget-s", type=float, default=30.0, help="about how long the rounds of one op×shape×dtype take")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--mem-margin-gb", type=float, default=2.0, help="GiB kept free when deciding what fits")
    ap.add_argument("--estimate-above", type=float, default=5e7,
                    help="estimate temporaries (profiler) only for shapes with more elements than this")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    ap.add_argument("--plan", action="store_true",
                    help="only print each variant's estimated peak memory per shape (allocates nothing big)")
    ap.add_argument("--json", help="also write the rows (and the machine) to this JSON file")
    ap.add_argument("--md", help="also write the markdown tables to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    raise_recompile_limit()

    reasons = unavailable_reasons()
    impls: Dict[str, object] = {"eager": reference, "torch": load_backend("torch")}
    start = time.perf_counter()
    try:
        impls["cpu"] = load_backend("cpu")  # builds the extension on first use
        print(f"C++ CPU kernels ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    except BackendUnavailableError as exc:
        reasons["cpu"] = str(exc)
    machine = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "memory_total_GB": round(total_bytes() / 1e9, 1), "memory_available_GB_at_start": round(available_bytes() / 1e9, 1),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {machine['memory_available_GB_at_start']} GB "
          f"available of {machine['memory_total_GB']} GB", file=sys.stderr)

    if args.plan:
        print(memory_plan(args.shapes, args.dtypes, args.ops, impls, not args.no_compile))
        return 0

    rows: List[Dict] = []
    t_all = time.perf_counter()
    for s in args.shapes:
        shape = parse_shape(s)
        for d in args.dtypes:
            dtype = getattr(torch, d)
            pool = Pool(shape, dtype)
            compiled = None if args.no_compile else _compiled_ops()
            for op in args.ops:
                t0 = time.perf_counter()
                group = bench_group(op, shape, dtype, pool, impls, args, reasons, compiled)
                rows.extend(group)
                for r in group:
                    print(f"{r['op']:<13} {r['shape']:<13} {r['dtype']:<5} {r['variant']:<9} {_f(r['ms'], '10.3f')} ms "
                          f"{_f(r['GBps'], '7.1f')} GB/s  of copy {_f(r['of_copy'], '5.2f')}  vs eager "
                          f"{_f(r['vs_eager'], '6.1f')}  vs compiled {_f(r['vs_compiled'], '5.2f')}  {r['note'][:90]}",
                          file=sys.stderr, flush=True)
                print(f"  ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
            pool.release()
    elapsed = time.perf_counter() - t_all
    machine["peak_rss_GB"] = round(peak_rss_bytes() / 1e9, 2)
    md = (f"Ops: {', '.join(args.ops)}; shapes: {', '.join(args.shapes)}; dtypes: {', '.join(args.dtypes)}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {machine['memory_available_GB_at_start']} GB "
          f"available of {machine['memory_total_GB']} GB at the start; run time {elapsed:.0f} s, peak RSS "
          f"{machine['peak_rss_GB']} GB.\n\n"
          f"{markdown_table(rows)}\n\n{unavailable_list(rows)}\n\nC++ kernels against the targets (model sizes):\n\n{target_table(rows)}\n")
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "elapsed_s": elapsed, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
