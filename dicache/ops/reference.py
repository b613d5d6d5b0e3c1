"""Pure-PyTorch reference of the three fused cache ops.

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
