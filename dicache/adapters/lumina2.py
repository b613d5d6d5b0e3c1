"""Lumina2Transformer2DModel (Lumina-Image 2.0): the caption and noise refiners run first (always computed), then
one list of layers on the joint [caption | image] sequence, which is what the cache stores and reconstructs; the
image tokens are sliced out after them. Its output norm ends in the output projection: ``norm_out`` is the output
module."""

from .base import HIDDEN, Adapter, BlockList

LUMINA2 = Adapter(
    family="lumina2",
    block_lists=(BlockList("layers", returns=(HIDDEN,), encoder_arg=None),),
    output_module="norm_out",
)
