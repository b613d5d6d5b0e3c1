"""The ``"cuda"`` backend: the CUDA kernels of ``csrc/cuda_kernels.cu`` for CUDA tensors.

Built just in time on first use where torch is a CUDA build and nvcc exists (see
:mod:`dicache.build`; ``DICACHE_BUILD_CUDA=0`` skips it); registers
``torch.ops.dicache_cuda.{probe_decide,reconstruct,refresh,quad_blend}`` with the signatures and
the in-place contract of :mod:`dicache.ops.reference`. Each op is one kernel launch
on the current stream for contiguous tensors: 16-byte vectorized grid-stride loops,
fp32 accumulation, and for ``probe_decide`` / ``refresh`` the epilogue (decision flag,
γ, ``den``) in the last block of the same launch. ``reconstruct`` reads γ from device
memory: nothing is read back to the host.

Non-contiguous inputs are made contiguous (one copy each); non-contiguous in-place
outputs are computed into a contiguous temporary and copied back. Tensors of mixed
dtypes are computed in fp32 through temporaries. Before capturing a CUDA graph, run
each op once on the capture stream (warm-up), so that its ticket counter exists.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import Backend
from ._compiled import load_compiled


def check_device(device: torch.device | str) -> Optional[str]:
    """``None`` for CUDA tensors (with a usable GPU), else why the CUDA kernels cannot run them."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the CUDA kernels run on cuda tensors, not {device.type}"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


def load() -> Backend:
    return load_compiled("cuda", "CUDA kernels", check_device)
