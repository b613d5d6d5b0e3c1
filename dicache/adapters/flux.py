"""FluxTransformer2DModel: double-stream then single-stream blocks, both return (encoder, hidden)."""

from .base import ENCODER, HIDDEN, Adapter, BlockList

FLUX = Adapter(
    family="flux",
    block_lists=(
        BlockList("transformer_blocks", returns=(ENCODER, HIDDEN)),
        BlockList("single_transformer_blocks", returns=(ENCODER, HIDDEN)),
    ),
)
