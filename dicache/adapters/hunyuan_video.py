"""HunyuanVideoTransformer3DModel: double then single blocks, both return (hidden, encoder)."""

from .base import ENCODER, HIDDEN, Adapter, BlockList

HUNYUAN_VIDEO = Adapter(
    family="hunyuan_video",
    block_lists=(
        BlockList("transformer_blocks", returns=(HIDDEN, ENCODER)),
        BlockList("single_transformer_blocks", returns=(HIDDEN, ENCODER)),
    ),
)
