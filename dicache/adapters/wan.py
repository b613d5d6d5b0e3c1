"""WanTransformer3DModel: one list of blocks returning the video tokens."""

from .base import HIDDEN, Adapter, BlockList

WAN = Adapter(
    family="wan",
    block_lists=(BlockList("blocks", returns=(HIDDEN,), encoder_arg=None),),
)
