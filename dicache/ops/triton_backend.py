"""The ``"triton"`` backend: Python launchers for the fused kernels in ``dicache.kernels.cache_ops``.

Each launcher has the signature and in-place contract of the matching
function in :mod:`dicache.ops.reference` (plus optional keyword-only launch
parameters ``block`` / ``iters``, used by tests and benchmarks) and performs
exactly one kernel launch when its tensors are contiguous. Nothing is read
back to the host.

Devices: CUDA tensors run compiled kernels. CPU tensors run only under the
Triton interpreter (``TRITON_INTERPRET=1`` in the environment *before* triton
is imported); :func:`check_device` says so.

Non-contiguous tensors: inputs are made contiguous explicitly (one copy each).
An in-place output that is not contiguous is computed into a contiguous
temporary (initialised from it when the kernel also reads it, as for
``p_prev``) and copied back afterwards, so its strides never matter to the
kernel but each such output costs an extra copy. Pass contiguous tensors for
the single-launch fast path.

Workspace: ``probe_decide`` and ``refresh`` reduce into a small fp32
workspace and an int32 ticket counter (see ``dicache/kernels/cache_ops.py``).
The kernels leave both all-zero when they finish, so the workspace is
allocated (zeroed) once per device and stream and reused without a memset.
Allocate it before CUDA-graph capture by running each op once (the usual
warm-up). If a launch raises, the workspace is dropped and re-zeroed on the
next call.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Dict, Optional, Tuple

import torch

from . import Backend, BackendUnavailableError, reference

try:
    import triton
    from dicache.kernels import cache_ops as _k
except ImportError as exc:  # pragma: no cover - depends on the environment
    triton = None
    _k = None
    _IMPORT_ERROR: Optional[BaseException] = exc
else:
    _IMPORT_ERROR = None

#: Tile size and warps per program on a GPU (memory-bound: 16 fp32 per thread).
GPU_BLOCK = 4096
GPU_NUM_WARPS = 8
#: Programs per SM that the reductions aim for (each loops over ``iters`` tiles).
GPU_PROGRAMS_PER_SM = 8
#: Tile size under the interpreter, where every program costs milliseconds.
INTERPRETER_BLOCK = 65536

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def interpreter_active() -> bool:
    """Whether the Triton interpreter is requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernels_interpreted() -> bool:
    """Whether the kernels were built as interpreter functions (env set before import)."""
    return _k is not None and type(_k.reconstruct_kernel).__name__ == "InterpretedFunction"


def check_device(device: torch.device | str) -> Optional[str]:
    """``None`` if the Triton kernels can run on ``device``, else the reason why not."""
    device = torch.device(device)
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if not interpreter_active():
            return "Triton runs on CPU tensors only under its interpreter (set TRITON_INTERPRET=1 before importing triton)"
        if not _kernels_interpreted():
            return "TRITON_INTERPRET=1 was set after the Triton kernels were imported; set it before importing triton"
        return None
    return f"the Triton backend runs on cuda (or cpu under TRITON_INTERPRET=1), not {device.type}"


def load() -> Backend:
    """The Triton backend; raises BackendUnavailableError if triton cannot be imported."""
    if _IMPORT_ERROR is not None:
        raise BackendUnavailableError(f"cannot import triton: {_IMPORT_ERROR}")
    return Backend(
        name="triton",
        probe_decide=probe_decide,
        reconstruct=reconstruct,
        refresh=refresh,
        quad_blend=quad_blend,
        check_device=check_device,
    )


# ---------------------------------------------------------------------------
# workspace


class _Workspace:
    """Zeroed fp32 sums (``capacity * NUM_SUMS``) and an int32 ticket, reset by the kernels."""

    def __init__(self, device: torch.device, capacity: int):
        self.capacity = capacity
        self.sums = torch.zeros(capacity * reference.NUM_SUMS, dtype=torch.float32, device=device)
        self.ticket = torch.zeros(1, dtype=torch.int32, device=device)


_workspaces: Dict[Tuple[str, int, int], _Workspace] = {}
_workspace_lock = threading.Lock()


def _stream_key(device: torch.device) -> Tuple[str, int, int]:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return ("cuda", index, torch.cuda.current_stream(index).cuda_stream)
    return (device.type, device.index if device.index is not None else -1, 0)


def _workspace(device: torch.device, batch: int) -> Tuple[Tuple[str, int, int], _Workspace]:
    key = _stream_key(device)
    with _workspace_lock:
        ws = _workspaces.get(key)
        if ws is None or ws.capacity < batch:
            capacity = max(batch, 2 * ws.capacity if ws is not None else 8)
            ws = _workspaces[key] = _Workspace(device, capacity)
    return key, ws


def _drop_workspace(key: Tuple[str, int, int]) -> None:
    with _workspace_lock:
        _workspaces.pop(key, None)


def reset_workspaces() -> None:
    """Forget every workspace (the next launch allocates a zeroed one)."""
    with _workspace_lock:
        _workspaces.clear()


# ---------------------------------------------------------------------------
# launch configuration


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _launch_shape(
    S: int, B: int, device: torch.device, block: Optional[int], iters: Optional[int], *, reduce: bool
) -> Tuple[int, int, int, int]:
    """``(BLOCK, iters, chunks, num_warps)`` for ``B`` samples of ``S`` elements.

    ``block`` / ``iters`` override the defaults (``block`` must be a power of
    two). Reductions (``reduce=True``) loop over ``iters`` tiles per program so
    that about ``GPU_PROGRAMS_PER_SM`` programs per SM exist in all; the
    element-wise reconstruction uses one tile per program.
    """
    on_gpu = device.type == "cuda" and not interpreter_active()
    if block is None:
        cap = GPU_BLOCK if on_gpu else INTERPRETER_BLOCK
        block = min(cap, triton.next_power_of_2(max(S, 1)))
        block = max(block, 128 if on_gpu else 16)
    elif block <= 0 or block & (block - 1):
        raise ValueError(f"block must be a positive power of two, got {block}")
    tiles = max(1, triton.cdiv(S, block))
    if iters is None:
        if reduce and on_gpu:
            target = max(1, GPU_PROGRAMS_PER_SM * _num_sms(device) // max(B, 1))
            iters = triton.cdiv(tiles, target)
        else:
            iters = 1
    elif iters <= 0:
        raise ValueError(f"iters must be positive, got {iters}")
    chunks = triton.cdiv(tiles, iters)
    num_warps = GPU_NUM_WARPS if block >= 4096 else 4
    return block, iters, chunks, num_warps


# ---------------------------------------------------------------------------
# argument handling


def _check_big(name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    if t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(like.shape)}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device}, expected {like.device}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float tensor, got {t.dtype}")


def _check_state(name: str, t: torch.Tensor, numel: int, device: torch.device) -> None:
    if t.numel() != numel:
        raise ValueError(f"{name} must have {numel} elements, got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")


def _contig(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A contiguous tensor with ``t``'s values (``t`` itself when already contiguous)."""
    if t is None or t.is_contiguous():
        return t
    return t.contiguous()


class _Outputs:
    """Contiguous stand-ins for in-place outputs, copied back by :meth:`commit`."""

    def __init__(self) -> None:
        self._pairs = []

    def __call__(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if t is None or t.is_contiguous():
            return t
        tmp = t.contiguous()  # keeps the current values: some outputs are read too
        self._pairs.append((t, tmp))
        return tmp

    def commit(self) -> None:
        for t, tmp in self._pairs:
            t.copy_(tmp)


def _dummy(t: torch.Tensor) -> torch.Tensor:
    """Any valid pointer for an absent optional tensor (never dereferenced)."""
    return t


# ---------------------------------------------------------------------------
# the ops


def probe_decide(
    p: torch.Tensor,
    x: torch.Tensor,
    p_prev: torch.Tensor,
    p_old: Optional[torch.Tensor],
    x_prev: Optional[torch.Tensor],
    acc: torch.Tensor,
    den: torch.Tensor,
    sums: torch.Tensor,
    flag: torch.Tensor,
    gamma: torch.Tensor,
    threshold: float,
    gamma_lo: float,
    gamma_hi: float,
    policy: int,
    error_mode: int,
    *,
    block: Optional[int] = None,
    iters: Optional[int] = None,
) -> None:
    """Fused :func:`dicache.ops.reference.probe_decide` (one launch, nothing read to the host)."""
    if policy not in (reference.POLICY_GLOBAL, reference.POLICY_MAX):
        raise ValueError(
            f"policy must be {reference.POLICY_GLOBAL} (global) or {reference.POLICY_MAX} (max), got {policy}"
        )
    if error_mode not in (reference.ERROR_PROBE, reference.ERROR_PROBE_MINUS_INPUT):
        raise ValueError(
            f"error_mode must be {reference.ERROR_PROBE} or {reference.ERROR_PROBE_MINUS_INPUT}, got {error_mode}"
        )
    delta_minus = error_mode == reference.ERROR_PROBE_MINUS_INPUT
    if delta_minus and x_prev is None:
        raise ValueError("error_mode=ERROR_PROBE_MINUS_INPUT needs x_prev")
    if p.dim() < 1:
        raise ValueError("p must have a batch dimension")
    for name, t in (("x", x), ("p_prev", p_prev), ("p_old", p_old), ("x_prev", x_prev)):
        if t is not None:
            _check_big(name, t, p)
    _check_big("p", p, p)
    B = p.shape[0]
    for name, t, n in (("acc", acc, B), ("den", den, B), ("sums", sums, B * reference.NUM_SUMS),
                       ("flag", flag, 1), ("gamma", gamma, B)):
        _check_state(name, t, n, p.device)
    if B == 0:  # nothing to launch over; the reference handles the empty batch
        reference.probe_decide(p, x, p_prev, p_old, x_prev, acc, den, sums, flag, gamma,
                               threshold, gamma_lo, gamma_hi, policy, error_mode)
        return
    S = p.numel() // B

    outs = _Outputs()
    p_c, x_c, p_old_c, den_c = _contig(p), _contig(x), _contig(p_old), _contig(den)
    p_prev_c, x_prev_c = outs(p_prev), outs(x_prev)
    acc_c, sums_c, flag_c, gamma_c = outs(acc), outs(sums), outs(flag), outs(gamma)

    BLOCK, n_iters, chunks, num_warps = _launch_shape(S, B, p.device, block, iters, reduce=True)
    key, ws = _workspace(p.device, B)
    try:
        _k.probe_decide_kernel[(chunks, B)](
            p_c, x_c, p_prev_c,
            p_old_c if p_old_c is not None else _dummy(p_c),
            x_prev_c if x_prev_c is not None else _dummy(p_c),
            acc_c, den_c, sums_c, flag_c, gamma_c,
            ws.sums, ws.ticket,
            S, B, n_iters, chunks * B,
            float(threshold), float(gamma_lo), float(gamma_hi),
            HAS_OLD=p_old is not None,
            HAS_XPREV=x_prev is not None,
            DELTA_MINUS=delta_minus,
            PER_SAMPLE=policy == reference.POLICY_MAX,
            BLOCK=BLOCK,
            BLOCK_B=max(2, triton.next_power_of_2(B)),
            num_warps=num_warps,
        )
    except BaseException:
        _drop_workspace(key)
        raise
    outs.commit()


def reconstruct(
    x: torch.Tensor,
    r_new: torch.Tensor,
    r_old: Optional[torch.Tensor],
    gamma: torch.Tensor,
    out: torch.Tensor,
    r_oldest: Optional[torch.Tensor] = None,
    c_oldest: Optional[torch.Tensor] = None,
    *,
    block: Optional[int] = None,
) -> None:
    """Fused :func:`dicache.ops.reference.reconstruct` (one launch, γ and c read on the device)."""
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension")
    if (r_oldest is None) != (c_oldest is None):
        raise ValueError("r_oldest and c_oldest go together")
    if r_oldest is not None and r_old is None:
        raise ValueError("r_oldest needs r_old")
    _check_big("x", x, x)
    _check_big("r_new", r_new, x)
    _check_big("out", out, x)
    if r_old is not None:
        _check_big("r_old", r_old, x)
    if r_oldest is not None:
        _check_big("r_oldest", r_oldest, x)
    B = x.shape[0]
    _check_state("gamma", gamma, B, x.device)
    if c_oldest is not None:
        _check_state("c_oldest", c_oldest, B, x.device)
    if B == 0 or x.numel() == 0:
        return
    S = x.numel() // B
    outs = _Outputs()
    x_c, rn_c, ro_c, g_c = _contig(x), _contig(r_new), _contig(r_old), _contig(gamma)
    r3_c, c3_c = _contig(r_oldest), _contig(c_oldest)
    out_c = outs(out)
    BLOCK, _, chunks, num_warps = _launch_shape(S, B, x.device, block, 1, reduce=False)
    _k.reconstruct_kernel[(chunks, B)](
        x_c, rn_c, ro_c if ro_c is not None else _dummy(x_c), g_c, out_c,
        r3_c if r3_c is not None else _dummy(x_c), c3_c if c3_c is not None else _dummy(g_c), S,
        HAS_OLD=r_old is not None, HAS_OLDEST=r_oldest is not None, BLOCK=BLOCK, num_warps=num_warps,
    )
    outs.commit()


def refresh(
    h: torch.Tensor,
    p: torch.Tensor,
    x: torch.Tensor,
    r_slot: torch.Tensor,
    p_slot: torch.Tensor,
    p_other: Optional[torch.Tensor],
    den: torch.Tensor,
    acc: torch.Tensor,
    *,
    block: Optional[int] = None,
    iters: Optional[int] = None,
) -> None:
    """Fused :func:`dicache.ops.reference.refresh` (one launch)."""
    if h.dim() < 1:
        raise ValueError("h must have a batch dimension")
    for name, t in (("h", h), ("p", p), ("x", x), ("r_slot", r_slot), ("p_slot", p_slot), ("p_other", p_other)):
        if t is not None:
            _check_big(name, t, h)
    B = h.shape[0]
    _check_state("den", den, B, h.device)
    _check_state("acc", acc, B, h.device)
    if B == 0:
        return
    S = h.numel() // B
    outs = _Outputs()
    h_c, p_c, x_c, po_c = _contig(h), _contig(p), _contig(x), _contig(p_other)
    r_c, ps_c, den_c, acc_c = outs(r_slot), outs(p_slot), outs(den), outs(acc)
    BLOCK, n_iters, chunks, num_warps = _launch_shape(S, B, h.device, block, iters, reduce=True)
    key, ws = _workspace(h.device, B)
    try:
        _k.refresh_kernel[(chunks, B)](
            h_c, p_c, x_c, r_c, ps_c,
            po_c if po_c is not None else _dummy(x_c),
            den_c, acc_c, ws.sums, ws.ticket,
            S, B, n_iters, chunks * B,
            HAS_OTHER=p_other is not None,
            BLOCK=BLOCK,
            BLOCK_B=max(2, triton.next_power_of_2(B)),
            num_warps=num_warps,
        )
    except BaseException:
        _drop_workspace(key)
        raise
    outs.commit()


def quad_blend(
    gamma: torch.Tensor,
    w: torch.Tensor,
    c0: torch.Tensor,
    c2: torch.Tensor,
    t0: float,
    t1: float,
    t2: float,
    p: Optional[torch.Tensor] = None,
    x: Optional[torch.Tensor] = None,
    p0: Optional[torch.Tensor] = None,
    p1: Optional[torch.Tensor] = None,
    p2: Optional[torch.Tensor] = None,
    stride: int = 1,
    policy: int = reference.POLICY_GLOBAL,
    *,
    block: Optional[int] = None,
    iters: Optional[int] = None,
) -> None:
    """Fused :func:`dicache.ops.reference.quad_blend` (one launch, nothing read to the host)."""
    fit = reference.check_quad_blend_args(gamma, w, c0, c2, p, x, p0, p1, p2, stride, policy)  # sizes, shapes
    B = gamma.numel()
    probes = (("p", p), ("x", x), ("p0", p0), ("p1", p1), ("p2", p2)) if fit else ()
    for name, t in (("w", w), ("c0", c0), ("c2", c2)) + probes:
        if t.device != gamma.device:
            raise ValueError(f"{name} is on {t.device}, expected {gamma.device}")
    for name, t in probes:
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be a float tensor, got {t.dtype}")
    if B == 0:
        return
    outs = _Outputs()
    g_c, w_c, c0_c, c2_c = _contig(gamma), outs(w), outs(c0), outs(c2)
    BLOCK_B = max(2, triton.next_power_of_2(B))
    if not fit:
        _k.quad_blend_kernel[(1,)](
            g_c, g_c, g_c, g_c, g_c, g_c, w_c, c0_c, c2_c, g_c, g_c,
            0, 1, 1, 0, B, 1, 1, float(t0), float(t1), float(t2),
            FIT=False, PER_SAMPLE=policy == reference.POLICY_MAX, BLOCK=16, BLOCK_B=BLOCK_B,
        )
        outs.commit()
        return
    N = p.shape[1] if p.dim() >= 2 else 1
    S = p.numel() // B
    inner = S // N if N else 0
    s = stride if p.dim() >= 2 else 1
    n_sub = -(-N // s) * inner
    p_c, x_c, p0_c, p1_c, p2_c = (_contig(t) for t in (p, x, p0, p1, p2))
    BLOCK, n_iters, chunks, num_warps = _launch_shape(n_sub, B, p.device, block, iters, reduce=True)
    key, ws = _workspace(p.device, B)
    try:
        _k.quad_blend_kernel[(chunks, B)](
            p_c, x_c, p0_c, p1_c, p2_c, g_c, w_c, c0_c, c2_c, ws.sums, ws.ticket,
            S, max(inner, 1), s * inner, n_sub, B, n_iters, chunks * B, float(t0), float(t1), float(t2),
            FIT=True, PER_SAMPLE=policy == reference.POLICY_MAX, BLOCK=BLOCK, BLOCK_B=BLOCK_B,
            num_warps=num_warps,
        )
    except BaseException:
        _drop_workspace(key)
        raise
    outs.commit()


__all__ = [
    "check_device",
    "interpreter_active",
    "load",
    "probe_decide",
    "quad_blend",
    "reconstruct",
    "refresh",
    "reset_workspaces",
]
