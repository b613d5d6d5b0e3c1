"""SanaTransformer2DModel: one list of blocks returning the image tokens; the text enters by cross-attention."""

from .base import HIDDEN, Adapter, BlockList

SANA = Adapter(
    family="sana",
    block_lists=(BlockList("transformer_blocks", returns=(HIDDEN,), encoder_arg=None),),
)
