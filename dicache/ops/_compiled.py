"""A Backend over the ops of a compiled extension (``csrc/``), shared by the cpu and cuda backends.

The extension registers ``torch.ops.<namespace>.{probe_decide,reconstruct,refresh,quad_blend}`` with the
signatures and the in-place contract of :mod:`dicache.ops.reference`; it is built just in time on
first use by :mod:`dicache.build`.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from . import Backend, BackendUnavailableError


def load_compiled(kind: str, label: str, check_device: Callable[[torch.device], Optional[str]]) -> Backend:
    """Build (first use) or load the ``kind`` ("cpu"/"cuda") extension; BackendUnavailableError says why not."""
    from dicache import build

    try:
        build.ensure(kind)
    except build.BuildError as exc:
        raise BackendUnavailableError(f"{label}: {exc}") from exc
    ops = getattr(torch.ops, f"dicache_{kind}")

    def probe_decide(p, x, p_prev, p_old, x_prev, acc, den, sums, flag, gamma,
                     threshold, gamma_lo, gamma_hi, policy, error_mode) -> None:
        ops.probe_decide(p, x, p_prev, p_old, x_prev, acc, den, sums, flag, gamma,
                         float(threshold), float(gamma_lo), float(gamma_hi), int(policy), int(error_mode))

    def quad_blend(gamma, w, c0, c2, t0, t1, t2, p=None, x=None, p0=None, p1=None, p2=None,
                   stride=1, policy=0) -> None:
        ops.quad_blend(gamma, w, c0, c2, float(t0), float(t1), float(t2), p, x, p0, p1, p2, int(stride),
                       int(policy))

    return Backend(
        name=kind,
        probe_decide=probe_decide,
        reconstruct=ops.reconstruct,
        refresh=ops.refresh,
        quad_blend=quad_blend,
        check_device=check_device,
    )
