"""The ``"cpu"`` backend: the C++ kernels of ``csrc/cpu_ops.cpp`` for CPU tensors.

Built just in time on first use (see :mod:`dicache.build`); registers
``torch.ops.dicache_cpu.{probe_decide,reconstruct,refresh,quad_blend}`` with the signatures and
the in-place contract of :mod:`dicache.ops.reference`. Each op is one OpenMP-parallel
pass over its tensors (fp32 arithmetic for fp32/fp16/bf16/fp64 inputs), with the
decision epilogue of ``probe_decide`` in C++ as well.

Non-contiguous inputs are made contiguous (one copy each); non-contiguous in-place
outputs are computed into a contiguous temporary and copied back. Tensors of mixed
dtypes are computed in fp32 through temporaries.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import Backend
from ._compiled import load_compiled


def check_device(device: torch.device | str) -> Optional[str]:
    """``None`` for CPU tensors, else why the C++ CPU kernels cannot run them."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    return f"the C++ CPU kernels run on cpu tensors, not {device.type}"


def load() -> Backend:
    return load_compiled("cpu", "C++ CPU kernels", check_device)
