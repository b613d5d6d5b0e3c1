"""Model adapters: one small declaration per model family, and their registry.

Built in: Flux, Wan and HunyuanVideo (with presets), models with their blocks (SkyReels-V2, Wan VACE, ChronoEdit,
FramePack), and Chroma, FLUX.2, QwenImage, Qwen-Image 2.1, CogView4, SD3, Sana, Lumina2, Z-Image, CogVideoX, Mochi,
LTX-Video and HunyuanVideo 1.5 (see the files beside this one).
To use DiCache on another DiT, declare its block lists once::

    from dicache.adapters import Adapter, BlockList, register

    register(MyDiT, Adapter(
        family="my_dit",
        block_lists=(BlockList("blocks", returns=("hidden",), encoder_arg=None),),
    ))

Models are matched on their class (or any base class), by class object or by
class name.
"""

from __future__ import annotations

from typing import Dict, Optional, Type, Union

import torch

from .base import (ENCODER, HIDDEN, Adapter, ArgLocator, BlockList, image_of, image_part, pack, with_image,
                   with_image_part)
from .chroma import CHROMA
from .cogvideox import COGVIDEOX
from .cogview4 import COGVIEW4
from .flux import FLUX
from .flux2 import FLUX2
from .hunyuan_video import HUNYUAN_VIDEO
from .hunyuan_video15 import HUNYUAN_VIDEO15
from .ltx_video import LTX_VIDEO
from .lumina2 import LUMINA2
from .mochi import MOCHI
from .qwenimage import QWENIMAGE
from .qwenimage21 import QWENIMAGE21
from .sana import SANA
from .sd3 import SD3
from .wan import WAN
from .z_image import Z_IMAGE

_REGISTRY: Dict[Union[str, type], Adapter] = {
    "FluxTransformer2DModel": FLUX,
    "WanTransformer3DModel": WAN,
    "HunyuanVideoTransformer3DModel": HUNYUAN_VIDEO,
    # fine-tunes with the same blocks as a family above: that family's declaration and preset (not measured on them)
    "SkyReelsV2Transformer3DModel": WAN,
    "WanVACETransformer3DModel": WAN,
    "ChronoEditTransformer3DModel": WAN,
    "HunyuanVideoFramepackTransformer3DModel": HUNYUAN_VIDEO,
    # families without a preset: the presets' rule on a 2× compute budget from 20 steps on (config.GENERIC_BUDGET)
    "ChromaTransformer2DModel": CHROMA,
    "Flux2Transformer2DModel": FLUX2,
    "QwenImageTransformer2DModel": QWENIMAGE,
    "QwenImage21Transformer2DModel": QWENIMAGE21,
    "CogView4Transformer2DModel": COGVIEW4,
    "SD3Transformer2DModel": SD3,
    "SanaTransformer2DModel": SANA,
    "Lumina2Transformer2DModel": LUMINA2,
    "CogVideoXTransformer3DModel": COGVIDEOX,
    "MochiTransformer3DModel": MOCHI,
    "LTXVideoTransformer3DModel": LTX_VIDEO,
    "ZImageTransformer2DModel": Z_IMAGE,
    "HunyuanVideo15Transformer3DModel": HUNYUAN_VIDEO15,
}


def register(model_class: Union[Type[torch.nn.Module], str], adapter: Adapter) -> None:
    """Declare how DiCache hooks into ``model_class`` (a class or a class name)."""
    if not isinstance(adapter, Adapter):
        raise TypeError(f"adapter must be a dicache.adapters.Adapter, got {type(adapter).__name__}")
    if not isinstance(model_class, (type, str)):
        raise TypeError(f"model_class must be a class or a class name, got {type(model_class).__name__}")
    _REGISTRY[model_class] = adapter


def find(model: torch.nn.Module) -> Optional[Adapter]:
    """The adapter of ``model``'s class or nearest base class, or None."""
    return find_class(type(model))


def find_class(model_class: type) -> Optional[Adapter]:
    """The adapter of ``model_class`` or its nearest base class, or None."""
    if not isinstance(model_class, type):
        raise TypeError(f"model_class must be a class, got {type(model_class).__name__}")
    for cls in model_class.__mro__:
        for key in (cls, cls.__name__):
            if key in _REGISTRY:
                return _REGISTRY[key]
    return None


def supported() -> list:
    """Names of the model classes with an adapter."""
    return sorted(k if isinstance(k, str) else k.__name__ for k in _REGISTRY)


__all__ = [
    "Adapter",
    "ArgLocator",
    "BlockList",
    "ENCODER",
    "HIDDEN",
    "find",
    "find_class",
    "image_of",
    "image_part",
    "pack",
    "register",
    "supported",
    "with_image",
    "with_image_part",
]
