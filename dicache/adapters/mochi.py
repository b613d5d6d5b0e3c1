"""MochiTransformer3DModel: one list of blocks returning (hidden, encoder); the last block is context_pre_only
and hands its text input on unchanged."""

from .base import ENCODER, HIDDEN, Adapter, BlockList

MOCHI = Adapter(
    family="mochi",
    block_lists=(BlockList("transformer_blocks", returns=(HIDDEN, ENCODER)),),
)
