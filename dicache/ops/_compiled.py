"""A Backend over the ops of a compiled extension (``csrc/``), shared by the cpu and cuda backends.

The extension registers ``torch.ops.<namespace>.{probe_decide,reconstruct,refresh}`` with the
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

    return Backend(
        name=kind,
        probe_decide=probe_decide,
        reconstruct=ops.reconstruct,
        refresh=ops.refresh,
        check_device=check_device,
    )
