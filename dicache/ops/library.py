"""The fused cache ops as PyTorch custom operators: ``torch.ops.dicache.*``.

Importing this module registers, once per process, in the ``dicache``
namespace:

* ``dicache::probe_decide(p, x, p_prev, p_old?, x_prev?, acc, den, sums, flag, gamma,
  threshold, gamma_lo, gamma_hi, policy, error_mode) -> ()``
  (mutates ``p_prev``, ``x_prev``, ``acc``, ``sums``, ``flag``, ``gamma``);
* ``dicache::reconstruct(x, r_new, r_old?, gamma, out, r_oldest?, c_oldest?) -> ()`` (mutates ``out``);
* ``dicache::refresh(h, p, x, r_slot, p_slot, p_other?, den, acc) -> ()``
  (mutates ``r_slot``, ``p_slot``, ``den``, ``acc``);
* ``dicache::quad_blend(gamma, w, c0, c2, t0, t1, t2, p?, x?, p0?, p1?, p2?, stride, policy) -> ()``
  (mutates ``w``, ``c0``, ``c2``).

They are defined with :func:`torch.library.custom_op` (so ``torch.compile``
sees them as opaque in-place ops and does not break the graph) plus
``register_fake`` implementations that only check shapes (every output is an
in-place argument, so there is nothing to allocate). The real implementation,
for every device, calls the best backend for the tensors' device,
``dicache.ops.select_backend("auto", device)``: on CPU the C++ ``"cpu"``
backend when it is built, else the PyTorch reference; on CUDA ``"cuda"``, then
``"triton"``, then the reference. The choice is cached per device; call
:func:`clear_backend_cache` after a backend becomes (un)available.

The ops are inference ops: no autograd formula is registered (call them
under ``torch.no_grad()`` / ``torch.inference_mode()``, as the cache does).

The module-level names ``probe_decide``, ``reconstruct``, ``refresh`` and ``quad_blend`` are
the registered ops, called with the arguments of :mod:`dicache.ops.reference`.
"""

from __future__ import annotations

import threading
from typing import Dict, Optional, Tuple

import torch

from . import Backend, reference, select_backend

NAMESPACE = "dicache"

_backend_cache: Dict[Tuple[str, Optional[int]], Backend] = {}
_backend_lock = threading.Lock()


def backend_for(device: torch.device) -> Backend:
    """The backend the registered ops use for tensors on ``device`` (``"auto"``, cached)."""
    key = (device.type, device.index)
    backend = _backend_cache.get(key)
    if backend is None:
        backend = select_backend("auto", device)
        with _backend_lock:
            _backend_cache[key] = backend
    return backend


def clear_backend_cache() -> None:
    """Forget the per-device backend choice (the next call selects again)."""
    with _backend_lock:
        _backend_cache.clear()


# ---------------------------------------------------------------------------
# shape checks shared by the fake (meta) implementations


def _same_shape(name: str, t: Optional[torch.Tensor], like: torch.Tensor) -> None:
    if t is not None and t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(like.shape)}")


def _numel(name: str, t: torch.Tensor, n) -> None:
    if t.numel() != n:
        raise ValueError(f"{name} must have {n} elements, got shape {tuple(t.shape)}")


def _registered(name: str) -> bool:
    try:
        getattr(getattr(torch.ops, NAMESPACE), name)
    except (AttributeError, RuntimeError):
        return False
    return True


# ---------------------------------------------------------------------------
# registration


def _register() -> None:
    """Define the four custom ops unless this process already has them."""
    if not _registered("probe_decide"):

        @torch.library.custom_op(
            f"{NAMESPACE}::probe_decide",
            mutates_args=("p_prev", "x_prev", "acc", "sums", "flag", "gamma"),
        )
        def _probe_decide(
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
            backend_for(p.device).probe_decide(
                p, x, p_prev, p_old, x_prev, acc, den, sums, flag, gamma,
                threshold, gamma_lo, gamma_hi, policy, error_mode,
            )

        @_probe_decide.register_fake
        def _(p, x, p_prev, p_old, x_prev, acc, den, sums, flag, gamma,
              threshold, gamma_lo, gamma_hi, policy, error_mode) -> None:
            for name, t in (("x", x), ("p_prev", p_prev), ("p_old", p_old), ("x_prev", x_prev)):
                _same_shape(name, t, p)
            B = p.shape[0]
            _numel("acc", acc, B)
            _numel("den", den, B)
            _numel("gamma", gamma, B)
            _numel("sums", sums, B * reference.NUM_SUMS)
            _numel("flag", flag, 1)
            if error_mode == reference.ERROR_PROBE_MINUS_INPUT and x_prev is None:
                raise ValueError("error_mode=ERROR_PROBE_MINUS_INPUT needs x_prev")

    if not _registered("reconstruct"):

        @torch.library.custom_op(f"{NAMESPACE}::reconstruct", mutates_args=("out",))
        def _reconstruct(
            x: torch.Tensor,
            r_new: torch.Tensor,
            r_old: Optional[torch.Tensor],
            gamma: torch.Tensor,
            out: torch.Tensor,
            r_oldest: Optional[torch.Tensor] = None,
            c_oldest: Optional[torch.Tensor] = None,
        ) -> None:
            backend_for(x.device).reconstruct(x, r_new, r_old, gamma, out, r_oldest, c_oldest)

        @_reconstruct.register_fake
        def _(x, r_new, r_old, gamma, out, r_oldest=None, c_oldest=None) -> None:
            for name, t in (("r_new", r_new), ("r_old", r_old), ("out", out), ("r_oldest", r_oldest)):
                _same_shape(name, t, x)
            _numel("gamma", gamma, x.shape[0])
            if (r_oldest is None) != (c_oldest is None):
                raise ValueError("r_oldest and c_oldest go together")
            if r_oldest is not None:
                if r_old is None:
                    raise ValueError("r_oldest needs r_old")
                _numel("c_oldest", c_oldest, x.shape[0])

    if not _registered("refresh"):

        @torch.library.custom_op(
            f"{NAMESPACE}::refresh",
            mutates_args=("r_slot", "p_slot", "den", "acc"),
        )
        def _refresh(
            h: torch.Tensor,
            p: torch.Tensor,
            x: torch.Tensor,
            r_slot: torch.Tensor,
            p_slot: torch.Tensor,
            p_other: Optional[torch.Tensor],
            den: torch.Tensor,
            acc: torch.Tensor,
        ) -> None:
            backend_for(h.device).refresh(h, p, x, r_slot, p_slot, p_other, den, acc)

        @_refresh.register_fake
        def _(h, p, x, r_slot, p_slot, p_other, den, acc) -> None:
            for name, t in (("p", p), ("x", x), ("r_slot", r_slot), ("p_slot", p_slot), ("p_other", p_other)):
                _same_shape(name, t, h)
            _numel("den", den, h.shape[0])
            _numel("acc", acc, h.shape[0])

    if not _registered("quad_blend"):

        @torch.library.custom_op(f"{NAMESPACE}::quad_blend", mutates_args=("w", "c0", "c2"))
        def _quad_blend(
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
        ) -> None:
            backend_for(gamma.device).quad_blend(gamma, w, c0, c2, t0, t1, t2, p, x, p0, p1, p2, stride, policy)

        @_quad_blend.register_fake
        def _(gamma, w, c0, c2, t0, t1, t2, p=None, x=None, p0=None, p1=None, p2=None, stride=1,
              policy=reference.POLICY_GLOBAL) -> None:
            reference.check_quad_blend_args(gamma, w, c0, c2, p, x, p0, p1, p2, stride, policy)


_register()


# The registered ops themselves, under the names (and argument order) of dicache.ops.reference.
probe_decide = torch.ops.dicache.probe_decide
reconstruct = torch.ops.dicache.reconstruct
refresh = torch.ops.dicache.refresh
quad_blend = torch.ops.dicache.quad_blend


__all__ = [
    "NAMESPACE",
    "backend_for",
    "clear_backend_cache",
    "probe_decide",
    "quad_blend",
    "reconstruct",
    "refresh",
]
