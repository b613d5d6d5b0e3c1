"""SD3Transformer2DModel (Stable Diffusion 3 and 3.5): one list of joint blocks returning (encoder, hidden); the last
is context_pre_only (no text stream out: a skipped call hands the incoming one on, which nothing after it reads).
A call with ``skip_layers`` (skip-layer guidance) leaves blocks out: it runs without the cache."""

from .base import ENCODER, HIDDEN, Adapter, BlockList

SD3 = Adapter(
    family="sd3",
    block_lists=(BlockList("transformer_blocks", returns=(ENCODER, HIDDEN)),),
    bypass_args=("skip_layers",),
)
