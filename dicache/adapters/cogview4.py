"""CogView4Transformer2DModel: one list of dual-stream blocks returning (hidden, encoder), called with positional
arguments (found by their place in the block's signature)."""

from .base import ENCODER, HIDDEN, Adapter, BlockList

COGVIEW4 = Adapter(
    family="cogview4",
    block_lists=(BlockList("transformer_blocks", returns=(HIDDEN, ENCODER)),),
)
