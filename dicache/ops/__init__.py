"""The fused cache ops and the backend dispatch.

Every backend implements the four ops of :mod:`dicache.ops.reference` with
the same signatures and the same in-place contract:

* ``probe_decide`` — probe statistics, error accumulation, decision flag and γ;
* ``reconstruct`` — ``h = x + R[-2] + γ·(R[-1] − R[-2])`` (or ``x + R[-1]``), plus ``c·(R[-3] − R[-2])``
  when given ``R[-3]`` (the quadratic of ``alignment_order`` 2 and "auto");
* ``refresh`` — write ``R = h − x`` and ``P = p − x`` into window slots;
* ``quad_blend`` — the reconstruction weights of ``alignment_order`` "auto" and 2 (the line bent
  towards the quadratic, the bend optionally fitted on the probe), on the device.

A backend is loaded lazily by name. Loading or device checks that fail raise
:class:`BackendUnavailableError` with the reason, so that ``select_backend``
can say why a backend was rejected and which ones can run instead.

To add a backend, write a module with a ``load() -> Backend`` function and add
its name to ``_LOADERS`` (and to ``_AUTO_ORDER`` if ``"auto"`` may pick it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from . import reference

BACKENDS: Tuple[str, ...] = ("auto", "torch", "triton", "cuda", "cpu")


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run here; the message says why."""


@dataclass(frozen=True)
class Backend:
    """One implementation of the four fused ops.

    ``check_device(device)`` returns ``None`` when the backend can run tensors
    on ``device``, or a short reason why it cannot.
    """

    name: str
    probe_decide: Callable[..., None]
    reconstruct: Callable[..., None]
    refresh: Callable[..., None]
    quad_blend: Callable[..., None]
    check_device: Callable[[torch.device], Optional[str]]


def _load_torch() -> Backend:
    return Backend(
        name="torch",
        probe_decide=reference.probe_decide,
        reconstruct=reference.reconstruct,
        refresh=reference.refresh,
        quad_blend=reference.quad_blend,
        check_device=lambda device: None,
    )


def _module_loader(module: str) -> Callable[[], Backend]:
    def load() -> Backend:
        try:
            mod = importlib.import_module(module, __name__)
        except ModuleNotFoundError as exc:  # the backend's module or one of its dependencies
            raise BackendUnavailableError(f"cannot import {exc.name!r}") from exc
        return mod.load()

    return load


# name -> loader; a loader returns a Backend or raises BackendUnavailableError.
_LOADERS: Dict[str, Callable[[], Backend]] = {
    "torch": _load_torch,
    "triton": _module_loader(".triton_backend"),
    "cuda": _module_loader(".cuda_backend"),
    "cpu": _module_loader(".cpu_backend"),
}

# What "auto" tries, per device type, best first. "torch" runs everywhere.
_AUTO_ORDER: Dict[str, Tuple[str, ...]] = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("cpu", "torch"),
}

_loaded: Dict[str, Backend] = {}


def load_backend(name: str) -> Backend:
    """Load a backend by name (cached); raises BackendUnavailableError with the reason."""
    if name not in _LOADERS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name not in _loaded:
        _loaded[name] = _LOADERS[name]()
    return _loaded[name]


def _why_not(name: str, device: torch.device) -> Optional[str]:
    try:
        backend = load_backend(name)
    except BackendUnavailableError as exc:
        return str(exc)
    return backend.check_device(device)


def availability(device: torch.device | str = "cpu") -> Dict[str, Optional[str]]:
    """For each concrete backend: ``None`` if it can run on ``device``, else why not."""
    device = torch.device(device)
    return {name: _why_not(name, device) for name in _LOADERS}


def select_backend(name: str, device: torch.device | str) -> Backend:
    """The backend to use for tensors on ``device``.

    ``"auto"`` picks the best available one for the device type; a named
    backend that cannot run raises BackendUnavailableError naming the reason and
    the backends that can.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    device = torch.device(device)
    if name == "auto":
        for candidate in _AUTO_ORDER.get(device.type, ("torch",)):
            if _why_not(candidate, device) is None:
                return load_backend(candidate)
        return load_backend("torch")
    reason = _why_not(name, device)
    if reason is None:
        return load_backend(name)
    usable = [n for n, why in availability(device).items() if why is None]
    raise BackendUnavailableError(
        f"backend={name!r} cannot run on {device.type} tensors: {reason}. "
        f"Backends that can: {', '.join(usable)} (or 'auto')."
    )


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "availability",
    "load_backend",
    "reference",
    "select_backend",
]
