"""CogVideoXTransformer3DModel: one list of blocks returning (hidden, encoder); the final norm and projection
read the video tokens only."""

from .base import ENCODER, HIDDEN, Adapter, BlockList

COGVIDEOX = Adapter(
    family="cogvideox",
    block_lists=(BlockList("transformer_blocks", returns=(HIDDEN, ENCODER)),),
)
