"""Pure-PyTorch reference of the four fused cache ops.

This file *is* the specification every backend (Triton, C++, CUDA) is tested
against. Each function works on image-token tensors of shape ``[B, N, C]`` (any
float dtype; arithmetic in fp32) and on small fp32 state tensors that live on
the same device:

``acc``   [B] fp32  accumulated probe error since the last full call
``den``   [B] fp32  ``Σ|P[-1] − P[-2]|`` per sample, written at refresh time
``sums``  [B, 5] fp32 per-sample sums of the last probe (see ``SUM_*``)
``flag``  [1] int32  1 = reuse the cache for this call, 0 = compute the deep blocks
``gamma`` [B] fp32  the alignment step γ used by :func:`reconstruct`

Nothing here reads a value back to the host.
"""

from __future__ import annotations

from typing import Optional

import torch

# Columns of ``sums``.
SUM_PROBE_DIFF = 0  # Σ|p − p_prev|
SUM_PROBE_PREV = 1  # Σ|p_prev|
SUM_ALIGN = 2  # Σ|(p − x) − P[-2]|
SUM_INPUT_DIFF = 3  # Σ|x − x_prev|       (error_mode=ERROR_PROBE_MINUS_INPUT only)
SUM_INPUT_PREV = 4  # Σ|x_prev|           (error_mode=ERROR_PROBE_MINUS_INPUT only)
NUM_SUMS = 5

# ``policy``: how per-sample statistics become one decision.
POLICY_GLOBAL = 0  # pool the sums over the batch (the reference DiCache code)
POLICY_MAX = 1  # per-sample errors and γ; reuse only if every sample is under δ

# ``error_mode``: what is accumulated.
ERROR_PROBE = 0  # rel_l1(p, p_prev)
ERROR_PROBE_MINUS_INPUT = 1  # |rel_l1(p, p_prev) − rel_l1(x, x_prev)|


def _per_sample_abs_sum(t: torch.Tensor) -> torch.Tensor:
    return t.abs().flatten(1).sum(dim=1)


def _safe_ratio(num: torch.Tensor, den: torch.Tensor, fallback: float) -> torch.Tensor:
    """``num / den`` where ``den > 0`` and the result is finite, else ``fallback``."""
    ok = den > 0
    ratio = num / torch.where(ok, den, torch.ones_like(den))
    ok = ok & torch.isfinite(ratio)
    return torch.where(ok, ratio, torch.full_like(ratio, fallback))


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
) -> None:
    """Probe statistics, error accumulation, decision and γ.

    Reads ``p`` (probe output), ``x`` (input of block 0), ``p_prev`` (probe
    output of the previous call), ``p_old`` (``P[-2]``, or ``None`` when only one
    residual is stored) and ``x_prev`` (only for ``ERROR_PROBE_MINUS_INPUT``).

    Writes, in place:

    * ``sums[b, :]`` — the five per-sample sums (unused columns are 0);
    * ``acc[b] += err_b``, where ``err`` is the relative L1 change of the probe
      (pooled over the batch for ``POLICY_GLOBAL``); a zero or non-finite
      denominator makes ``err = +inf`` (forces a refresh);
    * ``flag[0] = 1`` iff every ``acc[b] < threshold`` (NaN compares false);
    * ``gamma[b] = clip(Σ|(p−x) − P[-2]| / den, gamma_lo, gamma_hi)``, with
      ``γ = 1`` (then clipped) when the denominator is zero or the ratio is not
      finite, and ``γ = 1`` when ``p_old`` is ``None`` (one-entry fallback);
    * ``p_prev ← p`` and, when given, ``x_prev ← x`` (the next call's baseline).
    """
    pf, xf, ppf = p.float(), x.float(), p_prev.float()
    s = torch.zeros(p.shape[0], NUM_SUMS, dtype=torch.float32, device=p.device)
    s[:, SUM_PROBE_DIFF] = _per_sample_abs_sum(pf - ppf)
    s[:, SUM_PROBE_PREV] = _per_sample_abs_sum(ppf)
    if p_old is not None:
        s[:, SUM_ALIGN] = _per_sample_abs_sum((pf - xf) - p_old.float())
    if error_mode == ERROR_PROBE_MINUS_INPUT:
        if x_prev is None:
            raise ValueError("error_mode=ERROR_PROBE_MINUS_INPUT needs x_prev")
        xpf = x_prev.float()
        s[:, SUM_INPUT_DIFF] = _per_sample_abs_sum(xf - xpf)
        s[:, SUM_INPUT_PREV] = _per_sample_abs_sum(xpf)

    if policy == POLICY_GLOBAL:
        stat = s.sum(dim=0, keepdim=True)  # [1, 5], broadcast over samples below
        den_g = den.sum().reshape(1)
    elif policy == POLICY_MAX:
        stat = s
        den_g = den
    else:
        raise ValueError(f"policy must be {POLICY_GLOBAL} (global) or {POLICY_MAX} (max), got {policy}")

    inf = float("inf")
    err = _safe_ratio(stat[:, SUM_PROBE_DIFF], stat[:, SUM_PROBE_PREV], inf)
    if error_mode == ERROR_PROBE_MINUS_INPUT:
        err_x = _safe_ratio(stat[:, SUM_INPUT_DIFF], stat[:, SUM_INPUT_PREV], inf)
        err = (err - err_x).abs()
        err = torch.where(torch.isfinite(err), err, torch.full_like(err, inf))
    elif error_mode != ERROR_PROBE:
        raise ValueError(f"error_mode must be {ERROR_PROBE} or {ERROR_PROBE_MINUS_INPUT}, got {error_mode}")

    new_acc = acc + err.expand_as(acc)
    reuse = (new_acc < threshold).all()
    if p_old is not None:
        g = _safe_ratio(stat[:, SUM_ALIGN], den_g, 1.0).clamp(gamma_lo, gamma_hi)
    else:
        g = torch.ones_like(den_g)

    acc.copy_(new_acc)
    sums.copy_(s)
    flag.copy_(reuse.to(flag.dtype).reshape(1))
    gamma.copy_(g.expand_as(gamma))
    p_prev.copy_(p)
    if x_prev is not None:
        x_prev.copy_(x)


def reconstruct(
    x: torch.Tensor,
    r_new: torch.Tensor,
    r_old: Optional[torch.Tensor],
    gamma: torch.Tensor,
    out: torch.Tensor,
    r_oldest: Optional[torch.Tensor] = None,
    c_oldest: Optional[torch.Tensor] = None,
) -> None:
    """``out = x + R[-2] + γ_b · (R[-1] − R[-2])``; ``out = x + R[-1]`` when ``r_old`` is None.

    With ``r_oldest`` (``R[-3]``, needs ``r_old``) and ``c_oldest`` (a [B] fp32 device tensor), the
    second-order term is added in the same pass: ``… + c_b · (R[-3] − R[-2])``, so that with the
    Lagrange weights of the three entries as ``γ`` and ``c`` the output is the quadratic's.

    ``gamma`` is a [B] fp32 device tensor. Arithmetic in fp32, stored in ``out.dtype``.
    """
    if (r_oldest is None) != (c_oldest is None):
        raise ValueError("r_oldest and c_oldest go together")
    if r_oldest is not None and r_old is None:
        raise ValueError("r_oldest needs r_old")
    xf, rn = x.float(), r_new.float()
    if r_old is None:
        h = xf + rn
    else:
        ro = r_old.float()
        shape = (-1, *([1] * (x.dim() - 1)))
        h = xf + ro + gamma.float().reshape(shape) * (rn - ro)
        if r_oldest is not None:
            h = h + c_oldest.float().reshape(shape) * (r_oldest.float() - ro)
    out.copy_(h)


def refresh(
    h: torch.Tensor,
    p: torch.Tensor,
    x: torch.Tensor,
    r_slot: torch.Tensor,
    p_slot: torch.Tensor,
    p_other: Optional[torch.Tensor],
    den: torch.Tensor,
    acc: torch.Tensor,
) -> None:
    """Store a fully computed call into the window slot.

    ``r_slot ← h − x`` and ``p_slot ← p − x`` (fp32 arithmetic, stored in the
    slot dtype); ``den[b] = Σ|p_slot − p_other|`` computed from the *stored*
    values (0 when ``p_other`` is None); ``acc ← 0``.
    """
    xf = x.float()
    r_slot.copy_(h.float() - xf)
    p_slot.copy_(p.float() - xf)
    if p_other is None:
        den.zero_()
    else:
        den.copy_(_per_sample_abs_sum(p_slot.float() - p_other.float()))
    acc.zero_()


def lagrange_weights(gamma, t0: float, t1: float, t2: float):
    """The weights ``(c0, c2)`` of the oldest and the newest of three entries stored at steps
    ``t0 < t1 < t2`` in the quadratic through them, evaluated at ``τ = t1 + γ·(t2 − t1)`` (γ = 1 at
    ``t2``); the middle entry's weight is ``1 − c0 − c2``. ``gamma``: a float or a tensor."""
    tau = t1 + gamma * (t2 - t1)
    c0 = (tau - t1) * (tau - t2) / ((t0 - t1) * (t0 - t2))
    c2 = (tau - t0) * (tau - t1) / ((t2 - t0) * (t2 - t1))
    return c0, c2


def fit_subsample(t: torch.Tensor, stride: int) -> torch.Tensor:
    """The elements :func:`quad_blend` fits on: every ``stride``-th index of dim 1 (all of a [B] tensor)."""
    return t[:, ::stride] if t.dim() >= 2 and stride > 1 else t


def check_quad_blend_args(gamma, w, c0, c2, p, x, p0, p1, p2, stride, policy) -> bool:
    """The shape checks of :func:`quad_blend` (shared by the backends and the fake op); True to fit ``w``.

    ``w``, ``c0``, ``c2``: ``B = gamma.numel()`` elements each; ``p, x, p0, p1, p2``: all given, of one shape
    ``[B, ...]``, or none; ``stride >= 1``; ``policy`` global or max. Raises ValueError naming the argument."""
    probes = (p, x, p0, p1, p2)
    if sum(t is not None for t in probes) not in (0, len(probes)):
        raise ValueError("p, x, p0, p1 and p2 go together (all given to fit w, or none to read it)")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if policy not in (POLICY_GLOBAL, POLICY_MAX):
        raise ValueError(f"policy must be {POLICY_GLOBAL} (global) or {POLICY_MAX} (max), got {policy}")
    B = gamma.numel()
    for name, t in (("w", w), ("c0", c0), ("c2", c2)):
        if t.numel() != B:
            raise ValueError(f"{name} must have {B} elements, got shape {tuple(t.shape)}")
    if p is None:
        return False
    if p.dim() < 1 or p.shape[0] != B:
        raise ValueError(f"p must be [B, ...] with B = {B} (gamma's numel), got shape {tuple(p.shape)}")
    for name, t in (("x", x), ("p0", p0), ("p1", p1), ("p2", p2)):
        if t.shape != p.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
    return True


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
    policy: int = POLICY_GLOBAL,
) -> None:
    """The reconstruction weights of ``alignment_order="auto"`` (and 2): the line bent towards the quadratic.

    With the three newest entries stored at steps ``t0 < t1 < t2`` and the call at ``τ = t1 + γ_b·(t2 − t1)``
    (``gamma`` [B] fp32), the line is ``R1 + γ·(R2 − R1)`` and the quadratic ``Σ c_i(τ)·R_i``
    (:func:`lagrange_weights`). The output ``line + w·(quadratic − line)`` is
    ``R1 + c2·(R2 − R1) + c0·(R0 − R1)`` with, written in place ([B] fp32 each)::

        c0[b] = w_b · c0(τ_b)        c2[b] = γ_b + w_b · (c2(τ_b) − γ_b)

    — the arguments :func:`reconstruct` takes as ``c_oldest`` and ``gamma``.

    ``w``: read when the probe tensors are not given (``w = 1``: the quadratic whole; the weight of a
    leading branch). With ``p`` (probe output), ``x`` (input of block 0) and the stored probe residuals
    ``p0, p1, p2`` (``P[-3], P[-2], P[-1]``, all of one shape ``[B, N, ...]``), ``w`` is first fitted on
    the probe and written: the line's miss of the measured probe residual and the quadratic's correction,

        miss = (p − x − P1) − γ·(P2 − P1)        bend = (c2(τ) − γ)·(P2 − P1) + c0(τ)·(P0 − P1),

    summed per sample (pooled over the batch for ``POLICY_GLOBAL``) on every ``stride``-th index of dim 1,
    give ``w = clip(Σ miss·bend / Σ bend², 0, 1)``, and ``w = 0`` where ``Σ bend² ≤ 0`` or the ratio is
    NaN. Arithmetic in fp32.
    """
    check_quad_blend_args(gamma, w, c0, c2, p, x, p0, p1, p2, stride, policy)
    B = gamma.numel()
    if B == 0:
        return
    g = gamma.float()
    l0, l2 = lagrange_weights(g, t0, t1, t2)
    if p is not None:
        P0, P1, P2, pf, xf = (fit_subsample(t, stride).float() for t in (p0, p1, p2, p, x))
        shape = (-1,) + (1,) * (pf.dim() - 1)
        gb = g.view(shape)
        d21 = P2 - P1
        miss = (pf - xf - P1) - gb * d21
        bend = (l2 - g).view(shape) * d21 + l0.view(shape) * (P0 - P1)
        num, den = (miss * bend).reshape(B, -1).sum(1), (bend * bend).reshape(B, -1).sum(1)
        if policy == POLICY_GLOBAL:
            num, den = num.sum().expand_as(num), den.sum().expand_as(den)
        ratio = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
        w.copy_(torch.nan_to_num(ratio, nan=0.0).clamp(0.0, 1.0))
    wf = w.float()
    c0.copy_(wf * l0)
    c2.copy_(g + wf * (l2 - g))
