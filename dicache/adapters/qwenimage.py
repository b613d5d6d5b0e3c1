"""QwenImageTransformer2DModel (Qwen-Image and its edit models): one list of dual-stream blocks returning
(encoder, hidden); only the image tokens are used after them."""

from .base import ENCODER, HIDDEN, Adapter, BlockList

QWENIMAGE = Adapter(
    family="qwenimage",
    block_lists=(BlockList("transformer_blocks", returns=(ENCODER, HIDDEN)),),
)
