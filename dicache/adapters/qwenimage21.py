"""QwenImage21Transformer2DModel (Qwen-Image 2.1): one list of single-stream blocks on the model's joint sequence
(with its KV cache on, the pipeline's default, the target tokens alone from the second step on)."""

from .base import HIDDEN, Adapter, BlockList

QWENIMAGE21 = Adapter(
    family="qwenimage21",
    block_lists=(BlockList("transformer_blocks", returns=(HIDDEN,), encoder_arg=None),),
)
