"""HunyuanVideo15Transformer3DModel (HunyuanVideo 1.5): one list of dual-stream blocks returning (hidden, encoder)."""

from .base import ENCODER, HIDDEN, Adapter, BlockList

HUNYUAN_VIDEO15 = Adapter(
    family="hunyuan_video15",
    block_lists=(BlockList("transformer_blocks", returns=(HIDDEN, ENCODER)),),
)
