"""GPU microbenchmark of the fused Triton cache ops against the PyTorch reference.

For each op (``probe_decide``, ``reconstruct``, ``refresh``), shape and dtype,
times the Triton launcher and :mod:`dicache.ops.reference` with
``triton.testing.do_bench`` (median, ms) and reports the effective bandwidth
computed from the *minimum* bytes the op must move: every big tensor it has to
read once plus every big tensor it has to write once (the small ``[B]`` state
tensors are counted too but are negligible). The reference moves several
times that, so its "GB/s" is an effective rate, not what the memory system
delivered.

Needs a CUDA GPU (``triton.testing.do_bench`` cannot run on CPU or under the
interpreter). Run::

    python benchmarks/bench_triton.py                 # default shapes, fp32 and bf16
    python benchmarks/bench_triton.py --json out.json # also write the rows

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

_STATE_BYTES = 4  # acc, den, gamma, sums are fp32; flag int32


@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    op: str
    shape: Tuple[int, int, int]
    dtype: torch.dtype
    has_old: bool = True  # probe_decide: p_old given; reconstruct: r_old given; refresh: p_other given
    error_mode: int = 0  # probe_decide only (1 = delta-minus, reads and rewrites x_prev)

    @property
    def label(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        extra = "" if self.op != "probe_decide" or self.error_mode == 0 else ",delta-minus"
        opt = "" if self.has_old else ",no-old"
        return f"{self.op}[{'x'.join(map(str, self.shape))},{dt}{opt}{extra}]"


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def tensor_traffic(op: str, *, has_old: bool = True, error_mode: int = 0) -> Tuple[int, int]:
    """(big tensors read, big tensors written) at the minimum, for one call of ``op``.

    * ``probe_decide`` reads ``p`` and ``p_prev`` and writes ``p_prev ← p``;
      it reads ``x`` when ``p_old`` is given (alignment sum) and ``p_old``
      itself; in delta-minus mode it also reads ``x`` and ``x_prev`` and writes
      ``x_prev ← x``.
    * ``reconstruct`` reads ``x``, ``r_new`` (and ``r_old``) and writes ``out``.
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
        return 2 + int(has_old), 1
    if op == "refresh":
        return 3 + int(has_old), 2
    raise ValueError(f"unknown op {op!r}; expected one of {OPS}")


def state_bytes(op: str, batch: int) -> int:
    """Bytes of the small per-sample state each op reads and writes."""
    if op == "probe_decide":
        # read acc, den; write acc, sums[B,5], gamma, flag
        return _STATE_BYTES * (batch * (2 + 1 + 5 + 1) + 1)
    if op == "reconstruct":
        return _STATE_BYTES * batch  # gamma
    if op == "refresh":
        return _STATE_BYTES * batch * 2  # write den, acc
    raise ValueError(f"unknown op {op!r}; expected one of {OPS}")


def min_bytes(case: Case) -> int:
    """The minimum number of bytes ``case.op`` must move (all tensors in ``case.dtype``)."""
    reads, writes = tensor_traffic(case.op, has_old=case.has_old, error_mode=case.error_mode)
    big = math.prod(case.shape) * element_size(case.dtype)
    return (reads + writes) * big + state_bytes(case.op, case.shape[0])


def gbps(nbytes: int, ms: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second) for ``nbytes`` moved in ``ms`` milliseconds."""
    return nbytes / (ms * 1e-3) / 1e9


def cases(shapes: Sequence[Tuple[int, int, int]] = SHAPES, dtypes: Sequence[torch.dtype] = DTYPES) -> Iterator[Case]:
    """The default benchmark grid: every op × shape × dtype, with the optional tensors given."""
    for shape in shapes:
        for dtype in dtypes:
            for op in OPS:
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
        return dict(x=big(), r_new=big(), r_old=big() if case.has_old else None,
                    gamma=torch.rand(B, device=device) + 1, out=torch.empty(case.shape, dtype=case.dtype, device=device)), {}
    return dict(h=big(), p=big(), x=big(), r_slot=torch.empty(case.shape, dtype=case.dtype, device=device),
                p_slot=torch.empty(case.shape, dtype=case.dtype, device=device),
                p_other=big() if case.has_old else None,
                den=torch.zeros(B, device=device), acc=torch.zeros(B, device=device)), {}


def verify(case: Case, device: torch.device) -> bool:
    """Run the fused op and the reference once on copies of the same inputs; True if they agree.

    Copies (``p_prev``/``x_prev``) and the flag must match exactly, sums and
    derived state to ``2e-5`` relative, stored tensors to 1-2 units of their dtype.
    """
    from dicache.ops import reference, triton_backend

    tensors, scalars = _make_args(case, device)
    mine = {k: (v.clone() if v is not None else None) for k, v in tensors.items()}
    getattr(triton_backend, case.op)(**mine, **scalars)
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
            print(f"  MISMATCH {case.label}: {name}", file=sys.stderr)
            return False
    return True


@dataclass
class Row:
    case: str
    bytes: int
    triton_ms: float
    triton_gbps: float
    reference_ms: Optional[float]
    reference_gbps: Optional[float]
    speedup: Optional[float]
    matches_reference: Optional[bool] = None


def run(case: Case, device: torch.device, *, with_reference: bool = True, rep_ms: int = 200) -> Row:
    """Time one case on ``device`` (CUDA) with ``triton.testing.do_bench`` (median)."""
    import triton.testing

    from dicache.ops import reference, triton_backend

    tensors, scalars = _make_args(case, device)
    fused = getattr(triton_backend, case.op)
    ref = getattr(reference, case.op)
    nbytes = min_bytes(case)
    t_ms = triton.testing.do_bench(lambda: fused(**tensors, **scalars), rep=rep_ms, return_mode="median")
    r_ms = None
    if with_reference:
        try:
            r_ms = triton.testing.do_bench(lambda: ref(**tensors, **scalars), rep=rep_ms, return_mode="median")
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()  # the reference's temporaries do not fit: report the fused op only
    return Row(
        case=case.label,
        bytes=nbytes,
        triton_ms=t_ms,
        triton_gbps=gbps(nbytes, t_ms),
        reference_ms=r_ms,
        reference_gbps=gbps(nbytes, r_ms) if r_ms else None,
        speedup=(r_ms / t_ms) if r_ms else None,
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--no-reference", action="store_true", help="time the Triton kernels only")
    parser.add_argument("--rep-ms", type=int, default=200, help="do_bench repetition time per measurement")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness check before timing")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_triton: needs a CUDA GPU (triton.testing.do_bench cannot run on CPU); nothing measured.",
              file=sys.stderr)
        return 2
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    rows: List[Dict] = []
    header = (f"{'case':48s} {'MB':>8s} {'triton ms':>10s} {'GB/s':>8s} {'ref ms':>9s} {'GB/s':>8s} "
              f"{'speedup':>8s} {'check':>6s}")
    print(header)
    failed = False
    for case in cases():
        ok = None if args.no_check else verify(case, device)
        failed |= ok is False
        torch.cuda.empty_cache()
        row = run(case, device, with_reference=not args.no_reference, rep_ms=args.rep_ms)
        row.matches_reference = ok
        ref_ms = f"{row.reference_ms:9.3f}" if row.reference_ms else f"{'-':>9s}"
        ref_bw = f"{row.reference_gbps:8.0f}" if row.reference_gbps else f"{'-':>8s}"
        spd = f"{row.speedup:7.2f}x" if row.speedup else f"{'-':>8s}"
        check = {None: "-", True: "ok", False: "FAIL"}[ok]
        print(f"{row.case:48s} {row.bytes / 1e6:8.1f} {row.triton_ms:10.3f} {row.triton_gbps:8.0f} {ref_ms} {ref_bw} "
              f"{spd} {check:>6s}")
        rows.append(asdict(row))
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(device), "rows": rows}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
