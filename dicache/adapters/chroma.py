"""ChromaTransformer2DModel: double-stream blocks returning (encoder, hidden), then single-stream blocks on the
[text | image] sequence the model concatenates between the lists (the image tokens last)."""

from .base import ENCODER, HIDDEN, Adapter, BlockList

CHROMA = Adapter(
    family="chroma",
    block_lists=(
        BlockList("transformer_blocks", returns=(ENCODER, HIDDEN)),
        BlockList("single_transformer_blocks", returns=(HIDDEN,), encoder_arg=None, joint=True),
    ),
)
