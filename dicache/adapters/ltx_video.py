"""LTXVideoTransformer3DModel: one list of blocks returning the video tokens; the text enters by cross-attention."""

from .base import HIDDEN, Adapter, BlockList

LTX_VIDEO = Adapter(
    family="ltx_video",
    block_lists=(BlockList("transformer_blocks", returns=(HIDDEN,), encoder_arg=None),),
)
