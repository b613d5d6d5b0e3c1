"""GPU microbenchmark of the fused cache ops: the Triton and CUDA kernels against the PyTorch
reference (eager and under ``torch.compile``) and against a plain copy.

For each op (``probe_decide``, ``reconstruct``, ``refresh``), shape and dtype, every
backend is first checked against :mod:`dicache.ops.reference` on fresh random inputs,
then each variant is timed with ``triton.testing.do_bench`` (median, ms). **GB/s** is
the *minimum* bytes the op must move (every big tensor it has to read once plus every
big tensor it has to write once, plus the small per-sample state) over the time; the
reference moves several times that, so its "GB/s" is an effective rate. **of copy** is
that over ``dst.copy_(src)`` between two of the op's tensors (one read + one write).
The compiled reference uses dynamic shapes (one compilation per op and dtype).

Needs a CUDA GPU (``triton.testing.do_bench`` cannot run on CPU or under the
interpreter). Run::

    python benchmarks/bench_triton.py                             # default shapes, fp32 and bf16
    python benchmarks/bench_triton.py --md ops.md --json ops.json # also write the table / the rows
    python benchmarks/bench_triton.py --shapes 1x1000x1536 --variants copy triton cuda

The byte accounting (:func:`min_bytes`, :func:`cases`) is plain Python and is
unit-tested on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

#: Shapes [B, N, C] to benchmark: Flux 1024² (4096 tokens × 3072), Wan 1.3B
#: 480p 81 frames (32760 × 1536), HunyuanVideo-class 720p (2 × 75600 × 5120).
SHAPES: Tuple[Tuple[int, int, int], ...] = ((1, 4096, 3072), (1, 32760, 1536), (2, 75600, 5120))
DTYPES: Tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
OPS: Tuple[str, ...] = ("probe_decide", "reconstruct", "refresh")
#: The grid's rows: the ops, with ``reconstruct3`` = ``reconstruct`` given ``R[-3]`` and its weight (the
#: second-order path of ``alignment_order=2`` and ``"auto"``, the presets' setting).
GRID_OPS: Tuple[str, ...] = ("probe_decide", "reconstruct", "reconstruct3", "refresh")

_STATE_BYTES = 4  # acc, den, gamma, sums are fp32; flag int32


@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    op: str
    shape: Tuple[int, int, int]
    dtype: torch.dtype
    has_old: bool = True  # probe_decide: p_old given; reconstruct: r_old given; refresh: p_other given
    error_mode: int = 0  # probe_decide only (1 = delta-minus, reads and rewrites x_prev)
    has_oldest: bool = False  # reconstruct only: r_oldest (R[-3]) and its weight c_oldest given

    def __post_init__(self):
        if self.has_oldest and (self.op != "reconstruct" or not self.has_old):
            raise ValueError("has_oldest is for reconstruct with r_old given")

    @property
    def label(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        extra = "" if self.op != "probe_decide" or self.error_mode == 0 else ",delta-minus"
        opt = "" if self.has_old else ",no-old"
        three = ",three" if self.has_oldest else ""
        return f"{self.op}[{'x'.join(map(str, self.shape))},{dt}{opt}{extra}{three}]"

    @property
    def grid_op(self) -> str:
        """The row's name in :data:`GRID_OPS` (``reconstruct3`` for the three-entry reconstruction)."""
        return "reconstruct3" if self.has_oldest else self.op


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def tensor_traffic(op: str, *, has_old: bool = True, error_mode: int = 0, has_oldest: bool = False) -> Tuple[int, int]:
    """(big tensors read, big tensors written) at the minimum, for one call of ``op``.

    * ``probe_decide`` reads ``p`` and ``p_prev`` and writes ``p_prev ← p``;
      it reads ``x`` when ``p_old`` is given (alignment sum) and ``p_old``
      itself; in delta-minus mode it also reads ``x`` and ``x_prev`` and writes
      ``x_prev ← x``.
    * ``reconstruct`` reads ``x``, ``r_new`` (and ``r_old``, and ``r_oldest``) and writes ``out``.
    * ``refresh`` reads ``h``, ``p``, ``x`` (and ``p_other``) and writes
      ``r_slot`` and ``p_slot``.
    """
    if op == "probe_decide":
        reads, writes = 2, 1  # p, p_prev / p_prev
        needs_x = has_old or error_mode == 1
        reads += int(needs_x) + int(has_old)
        if error_mode == 1:
            reads, writes = reads + 1, writes + 1  # x_prev / x_prev
        return reads, writes
    if op == "reconstruct":
        return 2 + int(has_old) + int(has_oldest), 1
    if op == "refresh":
        return 3 + int(has_old), 2
    raise ValueError(f"unknown op {op!r}; expected one of {OPS}")


def state_bytes(op: str, batch: int, *, has_oldest: bool = False) -> int:
    """Bytes of the small per-sample state each op reads and writes."""
    if op == "probe_decide":
        # read acc, den; write acc, sums[B,5], gamma, flag
        return _STATE_BYTES * (batch * (2 + 1 + 5 + 1) + 1)
    if op == "reconstruct":
        return _STATE_BYTES * batch * (1 + int(has_oldest))  # gamma (and c_oldest)
    if op == "refresh":
        return _STATE_BYTES * batch * 2  # write den, acc
    raise ValueError(f"unknown op {op!r}; expected one of {OPS}")


def min_bytes(case: Case) -> int:
    """The minimum number of bytes ``case.op`` must move (all tensors in ``case.dtype``)."""
    reads, writes = tensor_traffic(case.op, has_old=case.has_old, error_mode=case.error_mode,
                                   has_oldest=case.has_oldest)
    big = math.prod(case.shape) * element_size(case.dtype)
    return (reads + writes) * big + state_bytes(case.op, case.shape[0], has_oldest=case.has_oldest)


def gbps(nbytes: int, ms: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second) for ``nbytes`` moved in ``ms`` milliseconds."""
    return nbytes / (ms * 1e-3) / 1e9


def cases(shapes: Sequence[Tuple[int, int, int]] = SHAPES, dtypes: Sequence[torch.dtype] = DTYPES,
          ops: Sequence[str] = GRID_OPS) -> Iterator[Case]:
    """The benchmark grid: every op of :data:`GRID_OPS` (or ``ops``) × shape × dtype, with the optional
    tensors given."""
    unknown = [op for op in ops if op not in GRID_OPS]
    if unknown:
        raise ValueError(f"ops: unknown {unknown}; expected some of {GRID_OPS}")
    for shape in shapes:
        for dtype in dtypes:
            for op in ops:
                if op == "reconstruct3":
                    yield Case("reconstruct", tuple(shape), dtype, has_oldest=True)
                else:
                    yield Case(op, tuple(shape), dtype)


# ---------------------------------------------------------------------------
# GPU part


def _make_args(case: Case, device: torch.device):
    """Fresh random inputs and state for one call (fresh per call of this function)."""
    B = case.shape[0]
    gen = torch.Generator(device=device).manual_seed(0)

    def big():
        return torch.randn(case.shape, generator=gen, device=device).to(case.dtype)

    if case.op == "probe_decide":
        tensors = dict(
            p=big(), x=big(), p_prev=big(),
            p_old=big() if case.has_old else None,
            x_prev=big() if case.error_mode == 1 else None,
            acc=torch.zeros(B, device=device), den=torch.rand(B, device=device) * 1e6 + 1,
            sums=torch.zeros(B, 5, device=device), flag=torch.zeros(1, dtype=torch.int32, device=device),
            gamma=torch.ones(B, device=device),
        )
        scalars = dict(threshold=0.1, gamma_lo=1.0, gamma_hi=1.5, policy=0, error_mode=case.error_mode)
        return tensors, scalars
    if case.op == "reconstruct":
        args = dict(x=big(), r_new=big(), r_old=big() if case.has_old else None,
                    gamma=torch.rand(B, device=device) + 1, out=torch.empty(case.shape, dtype=case.dtype, device=device))
        if case.has_oldest:  # Lagrange-like weights: c in [-0.5, 0.5]
            args.update(r_oldest=big(), c_oldest=torch.rand(B, device=device) - 0.5)
        return args, {}
    return dict(h=big(), p=big(), x=big(), r_slot=torch.empty(case.shape, dtype=case.dtype, device=device),
                p_slot=torch.empty(case.shape, dtype=case.dtype, device=device),
                p_other=big() if case.has_old else None,
                den=torch.zeros(B, device=device), acc=torch.zeros(B, device=device)), {}


def verify(case: Case, device: torch.device, backend: str = "triton") -> bool:
    """Run ``backend``'s op and the reference once on copies of the same inputs; True if they agree.

    Copies (``p_prev``/``x_prev``) and the flag must match exactly, sums and
    derived state to ``2e-5`` relative, stored tensors to 2 units of their dtype
    (a GPU may fuse a multiply-add that the reference rounds twice).
    """
    from dicache.ops import load_backend, reference, triton_backend

    tensors, scalars = _make_args(case, device)
    mine = {k: (v.clone() if v is not None else None) for k, v in tensors.items()}
    getattr(load_backend(backend), case.op)(**mine, **scalars)
    getattr(reference, case.op)(**tensors, **scalars)
    for name, want in tensors.items():
        got = mine[name]
        if want is None:
            continue
        if name in ("p_prev", "x_prev", "flag"):
            ok = torch.equal(got, want)
        elif want.dim() <= 2:  # per-sample state: sums, acc, gamma, den
            rtol = 2e-5
            if name == "den" and triton_backend.interpreter_active():
                # the interpreter truncates fp32 -> bf16 stores: den (a sum over the
                # stored p_slot) then differs by up to one ulp of the slot dtype
                rtol = max(rtol, torch.finfo(case.dtype).eps)
            ok = torch.allclose(got.float(), want.float(), rtol=rtol, atol=1e-5, equal_nan=True)
        else:
            eps = torch.finfo(want.dtype).eps
            ok = torch.allclose(got.float(), want.float(), rtol=2 * eps, atol=1e-5)
        if not ok:
            print(f"  MISMATCH {case.label} ({backend}): {name}", file=sys.stderr)
            return False
    return True


# The variants timed for each case: a plain copy between two of the op's tensors (the practical
# bandwidth: one read + one write), the reference eager and under torch.compile, and the backends.
VARIANTS: Tuple[str, ...] = ("copy", "eager", "compiled", "triton", "cuda")
#: The written tensor of each op that the "copy" variant overwrites (from the op's first big input).
COPY_PAIR: Dict[str, Tuple[str, str]] = {"probe_decide": ("p", "p_prev"), "reconstruct": ("x", "out"),
                                         "refresh": ("h", "r_slot")}


def compiled_reference(op: str):
    """The reference op under ``torch.compile`` with dynamic shapes: one compilation per op and dtype
    serves every shape (static shapes would compile 18 times, minutes of a short GPU lease)."""
    from dicache.ops import reference

    return torch.compile(getattr(reference, op), dynamic=True)


def time_case(case: Case, device: torch.device, impls: Dict[str, object], *, rep_ms: int = 100) -> List[Dict]:
    """One row per variant of ``case``: median ms (``triton.testing.do_bench``), GB/s from the fewest bytes,
    fraction of the copy bandwidth, and the speed-ups over the eager and the compiled reference."""
    import triton.testing

    tensors, scalars = _make_args(case, device)
    src, dst = (tensors[k] for k in COPY_PAIR[case.op])
    fns = {"copy": lambda: dst.copy_(src)}
    for name, impl in impls.items():
        fns[name] = (lambda fn=getattr(impl, case.op) if not callable(impl) else impl: fn(**tensors, **scalars))
    nbytes = min_bytes(case)
    rows: Dict[str, Dict] = {}
    for name, fn in fns.items():
        row = {"case": case.label, "op": case.grid_op, "shape": "x".join(map(str, case.shape)),
               "dtype": str(case.dtype).replace("torch.", ""), "variant": name, "ms": None, "GBps": None,
               "of_copy": None, "vs_eager": None, "vs_compiled": None, "note": ""}
        try:
            row["ms"] = triton.testing.do_bench(fn, rep=rep_ms, return_mode="median")
        except torch.OutOfMemoryError:  # the eager reference's temporaries may not fit: a row with the reason
            row["note"] = "out of GPU memory"
        torch.cuda.empty_cache()
        if row["ms"]:
            moved = 2 * src.numel() * src.element_size() if name == "copy" else nbytes
            row["GBps"] = gbps(moved, row["ms"])
        rows[name] = row
    copy_bw = rows["copy"]["GBps"]
    for r in rows.values():
        if r["ms"] and copy_bw:
            r["of_copy"] = r["GBps"] / copy_bw
        for ref_name, key in (("eager", "vs_eager"), ("compiled", "vs_compiled")):
            base = rows.get(ref_name, {}).get("ms")
            if r["ms"] and base and r["variant"] not in ("copy", ref_name):
                r[key] = base / r["ms"]
    return list(rows.values())


def _f(v, spec: str, suffix: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{suffix}"


def markdown_table(rows: List[Dict]) -> str:
    lines = ["| op | shape | dtype | variant | median ms | GB/s | of copy | vs eager | vs compiled | check |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        check = {None: "", True: "ok", False: "**FAIL**"}[r.get("matches_reference")]
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['variant']} | {_f(r['ms'], '.4f')} | "
                     f"{_f(r['GBps'], '.0f')} | {_f(r['of_copy'], '.2f')} | {_f(r['vs_eager'], '.1f', '×')} | "
                     f"{_f(r['vs_compiled'], '.2f', '×')} | {check}{r['note']} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", help="BxNxC shapes (default: the Flux, Wan 1.3B and Wan 14B sizes)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--ops", nargs="+", default=list(GRID_OPS), choices=GRID_OPS,
                        help="rows to time (reconstruct3: reconstruct with R[-3], the presets' path)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--rep-ms", type=int, default=100, help="do_bench repetition time per measurement")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--md", help="also write the markdown table to this file")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_triton: needs a CUDA GPU (triton.testing.do_bench cannot run on CPU); nothing measured.",
              file=sys.stderr)
        return 2
    from dicache.ops import BackendUnavailableError, load_backend, reference

    device = torch.device("cuda")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    dtypes = [getattr(torch, d) for d in args.dtypes]
    impls: Dict[str, object] = {}
    unavailable: Dict[str, str] = {}
    for name in args.variants:
        if name == "eager":
            impls[name] = reference
        elif name in ("triton", "cuda"):
            try:
                impls[name] = load_backend(name)  # builds the CUDA extension on first use
                why = impls[name].check_device(device)
                if why:
                    del impls[name]
                    unavailable[name] = why
            except BackendUnavailableError as exc:
                unavailable[name] = str(exc)
    compiled = {op: compiled_reference(op) for op in OPS} if "compiled" in args.variants else {}
    head = f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}"
    try:
        import triton

        head += f", triton {triton.__version__}"
    except ImportError:  # pragma: no cover
        pass
    print(head, file=sys.stderr)
    for name, why in unavailable.items():
        print(f"  {name}: not timed: {why}", file=sys.stderr)
    rows: List[Dict] = []
    failed = False
    for case in cases(shapes, dtypes, args.ops):
        checks = {name: verify(case, device, name) for name in ("triton", "cuda") if name in impls}
        failed |= not all(checks.values())
        case_impls = dict(impls)
        if compiled:
            case_impls["compiled"] = compiled[case.op]
        case_impls = {v: case_impls[v] for v in VARIANTS if v in case_impls}
        for r in time_case(case, device, case_impls, rep_ms=args.rep_ms):
            r["matches_reference"] = checks.get(r["variant"])
            rows.append(r)
            print(f"{r['case']:44s} {r['variant']:8s} {_f(r['ms'], '9.4f')} ms {_f(r['GBps'], '6.0f')} GB/s "
                  f"of copy {_f(r['of_copy'], '5.2f')} vs eager {_f(r['vs_eager'], '6.1f')} "
                  f"vs compiled {_f(r['vs_compiled'], '5.2f')} {r['note']}", file=sys.stderr, flush=True)
        torch.cuda.empty_cache()
    md = head + "\n\n" + markdown_table(rows) + "\n"
    md += "".join(f"\n* `{n}`: not timed: {why}" for n, why in unavailable.items())
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                       "unavailable": unavailable, "rows": rows}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
