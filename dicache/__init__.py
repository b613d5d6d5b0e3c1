"""DiCache for diffusers: skip the deep blocks of a diffusion transformer while a cheap probe says
little has changed, and reconstruct their output along the trajectory of the last full calls.

    import dicache
    dicache.enable(pipe)            # a diffusers pipeline or its transformer
    image = pipe(prompt).images[0]
    print(dicache.summary(pipe))
    dicache.disable(pipe)
"""

from .api import AlreadyEnabledError, NotEnabledError, disable, enable, is_enabled, reset, summary
from .config import PAPER_PRESETS, PRESETS, DiCacheConfig
from .ops import BackendUnavailableError


def build_info():
    """What the compiled extension built here (C++ CPU / CUDA kernels), with which compiler, and why not."""
    from .build import build_info as _build_info

    return _build_info()


__version__ = "0.1.0"

__all__ = [
    "AlreadyEnabledError",
    "BackendUnavailableError",
    "DiCacheConfig",
    "NotEnabledError",
    "PRESETS",
    "PAPER_PRESETS",
    "build_info",
    "disable",
    "enable",
    "is_enabled",
    "reset",
    "summary",
]
