"""ZImageTransformer2DModel (Z-Image): the noise and caption refiners run first (always computed), then one list of
layers on the joint [image | caption] sequence, which the cache stores and reconstructs; its forward takes lists
of latents and captions (argument ``x``) and its timestep as ``t``. Its final layer is picked per patch size from a
dict at each call: no single output module."""

from .base import HIDDEN, Adapter, BlockList

Z_IMAGE = Adapter(
    family="z_image",
    block_lists=(BlockList("layers", returns=(HIDDEN,), hidden_arg="x", encoder_arg=None),),
    timestep_arg="t",
    output_module=None,
)
