"""Tiny random models of the built-in families beyond Flux, Wan and HunyuanVideo, and one call's inputs, offline.

``CASES``: model class name -> (tiny model, forward kwargs of one call), for tests/test_adapters.py. SD3, Sana and
Lumina2 do not inherit diffusers' ``CacheMixin`` (their pipelines never call ``cache_context``): the tests use a
subclass that adds it, which leaves the forward untouched, so that calls can be given their step.
"""

from __future__ import annotations

import torch

import diffusers
from diffusers.models.cache_utils import CacheMixin


def _gen(seed: int):
    return torch.Generator().manual_seed(seed)


def _model(name: str, config: dict, seed: int = 0):
    cls = getattr(diffusers, name)
    if not issubclass(cls, CacheMixin):
        cls = type(name + "WithCacheContext", (cls, CacheMixin), {})
    torch.manual_seed(seed)
    return cls(**config).eval()


def qwenimage_call(batch: int = 1, seed: int = 1):
    g, h, w, n_txt = _gen(seed), 4, 4, 8
    return dict(hidden_states=torch.randn(batch, h * w, 16, generator=g),
                encoder_hidden_states=torch.randn(batch, n_txt, 32, generator=g),
                encoder_hidden_states_mask=torch.ones(batch, n_txt, dtype=torch.long),
                timestep=torch.full((batch,), 0.7), img_shapes=[[(1, h, w)]] * batch)


def cogview4_call(batch: int = 1, seed: int = 1):
    g = _gen(seed)
    size = torch.tensor([[64.0, 64.0]]).repeat(batch, 1)
    return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(batch, 8, 32, generator=g), timestep=torch.full((batch,), 500.0),
                original_size=size, target_size=size.clone(), crop_coords=torch.zeros(batch, 2))


def sd3_call(batch: int = 1, seed: int = 1):
    g = _gen(seed)
    return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(batch, 8, 32, generator=g),
                pooled_projections=torch.randn(batch, 16, generator=g), timestep=torch.full((batch,), 500.0))


def sana_call(batch: int = 1, seed: int = 1):
    g = _gen(seed)
    return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(batch, 8, 32, generator=g),
                encoder_attention_mask=torch.ones(batch, 8), timestep=torch.full((batch,), 500.0))


def lumina2_call(batch: int = 1, seed: int = 1):
    g = _gen(seed)
    mask = torch.ones(batch, 8, dtype=torch.bool)
    mask[:, 6:] = False  # padded caption tokens
    return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(batch, 8, 32, generator=g), encoder_attention_mask=mask,
                timestep=torch.full((batch,), 0.5))  # Lumina2's time runs from 0 (noise) to 1 (image)


def cogvideox_call(batch: int = 1, seed: int = 1):
    g = _gen(seed)
    return dict(hidden_states=torch.randn(batch, 2, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(batch, 8, 32, generator=g),
                timestep=torch.full((batch,), 500, dtype=torch.long))


def mochi_call(batch: int = 1, seed: int = 1):
    g = _gen(seed)
    mask = torch.ones(batch, 8, dtype=torch.bool)
    mask[:, 6:] = False
    return dict(hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(batch, 8, 32, generator=g),
                timestep=torch.full((batch,), 500, dtype=torch.long), encoder_attention_mask=mask)


def mochi_model(seed: int = 0):
    model = _model("MochiTransformer3DModel", dict(
        patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=4, pooled_projection_dim=16,
        in_channels=4, out_channels=4, text_embed_dim=32, time_embed_dim=16, max_sequence_length=8), seed)
    with torch.no_grad():  # its RoPE frequencies start at zero (RoPE the identity): give them values
        model.pos_frequencies.normal_(0, 0.1, generator=_gen(seed + 7))
    return model


def ltx_call(batch: int = 1, seed: int = 1):
    g, f, h, w, n_txt = _gen(seed), 2, 4, 4, 8
    mask = torch.ones(batch, n_txt, dtype=torch.long)
    mask[:, -2:] = 0
    return dict(hidden_states=torch.randn(batch, f * h * w, 8, generator=g),
                encoder_hidden_states=torch.randn(batch, n_txt, 16, generator=g),
                timestep=torch.full((batch,), 700.0), encoder_attention_mask=mask, num_frames=f, height=h, width=w,
                rope_interpolation_scale=(8 / 25.0, 32, 32))


def skyreels_call(batch: int = 1, seed: int = 1):
    g = _gen(seed)
    return dict(hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(batch, 8, 32, generator=g), timestep=torch.full((batch,), 700.0))


def framepack_call(batch: int = 1, seed: int = 1):
    """Shaped like the pipeline's sampling with history sizes [4, 2, 1] and a window of 2 latent frames (the forward
    needs the clean latents, the 2× and 4× history and the image embeddings)."""
    g, c, h, w, window, n_txt = _gen(seed), 4, 8, 8, 2, 8
    hist = [4, 2, 1]
    prefix, i4, i2, i1, ilat = torch.arange(0, 1 + sum(hist) + window).split([1, *hist, window])
    return dict(
        hidden_states=torch.randn(batch, c, window, h, w, generator=g), timestep=torch.full((batch,), 700.0),
        encoder_hidden_states=torch.randn(batch, n_txt, 32, generator=g),
        encoder_attention_mask=torch.ones(batch, n_txt, dtype=torch.long),
        pooled_projections=torch.randn(batch, 16, generator=g), image_embeds=torch.randn(batch, 5, 24, generator=g),
        indices_latents=ilat, guidance=torch.full((batch,), 10000.0),
        latents_clean=torch.randn(batch, c, 1 + hist[2], h, w, generator=g), indices_latents_clean=torch.cat([prefix, i1]),
        latents_history_2x=torch.randn(batch, c, hist[1], h, w, generator=g), indices_latents_history_2x=i2,
        latents_history_4x=torch.randn(batch, c, hist[0], h, w, generator=g), indices_latents_history_4x=i4,
    )


def chroma_call(batch: int = 1, seed: int = 1):
    g, n_img, n_txt = _gen(seed), 16, 8
    return dict(hidden_states=torch.randn(batch, n_img, 16, generator=g),
                encoder_hidden_states=torch.randn(batch, n_txt, 32, generator=g), timestep=torch.full((batch,), 0.7),
                img_ids=torch.zeros(n_img, 3), txt_ids=torch.zeros(n_txt, 3),
                # as ChromaPipeline builds it: the text mask (two padded tokens), then ones for the image tokens
                attention_mask=torch.cat([torch.ones(batch, n_txt - 2, dtype=torch.bool),
                                          torch.zeros(batch, 2, dtype=torch.bool),
                                          torch.ones(batch, n_img, dtype=torch.bool)], dim=1))


def flux2_call(batch: int = 1, seed: int = 1):
    g, h, w, n_txt = _gen(seed), 4, 4, 8
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(h).float(), torch.arange(w).float(),
                                         torch.zeros(1), indexing="ij"), -1).reshape(-1, 4)
    txt_ids = torch.stack([torch.zeros(n_txt)] * 3 + [torch.arange(n_txt).float()], -1)
    return dict(hidden_states=torch.randn(batch, h * w, 16, generator=g),
                encoder_hidden_states=torch.randn(batch, n_txt, 32, generator=g), timestep=torch.full((batch,), 0.7),
                img_ids=img_ids, txt_ids=txt_ids, guidance=torch.full((batch,), 4.0))


def z_image_call(batch: int = 1, seed: int = 1):
    """Lists of latents and captions (unequal caption lengths from a batch of 2); its pipeline passes t rising from
    0 (noise) to 1 (image)."""
    g = _gen(seed)
    return dict(x=[torch.randn(4, 1, 8, 8, generator=g) for _ in range(batch)],
                cap_feats=[torch.randn(8 if i % 2 == 0 else 5, 32, generator=g) for i in range(batch)],
                t=torch.full((batch,), 0.5))


def wan_vace_call(batch: int = 1, seed: int = 1):
    """VACE's control input and per-layer scales: its control blocks add hints after blocks 0, 2 and 3."""
    g = _gen(seed)
    return dict(hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=g), timestep=torch.full((batch,), 500.0),
                encoder_hidden_states=torch.randn(batch, 8, 32, generator=g),
                control_hidden_states=torch.randn(batch, 8, 2, 8, 8, generator=g),
                control_hidden_states_scale=torch.tensor([1.0, 0.8, 1.2]))


def chronoedit_call(batch: int = 1, seed: int = 1):
    """Latents and the image condition on channels (4 + 4), 2 latent frames."""
    g = _gen(seed)
    return dict(hidden_states=torch.randn(batch, 8, 2, 8, 8, generator=g), timestep=torch.full((batch,), 500.0),
                encoder_hidden_states=torch.randn(batch, 8, 32, generator=g))


def hunyuan_video15_call(batch: int = 1, seed: int = 1):
    """Latents, condition latents and mask (4 + 4 + 1); padded Qwen (8) and ByT5 (6) prompts; image embeddings."""
    g = _gen(seed)
    mask, mask_2 = torch.ones(batch, 8, dtype=torch.long), torch.ones(batch, 6, dtype=torch.long)
    mask[:, 6:] = 0
    mask_2[:, 4:] = 0
    return dict(hidden_states=torch.randn(batch, 9, 2, 4, 4, generator=g), timestep=torch.full((batch,), 500.0),
                encoder_hidden_states=torch.randn(batch, 8, 32, generator=g), encoder_attention_mask=mask,
                encoder_hidden_states_2=torch.randn(batch, 6, 24, generator=g), encoder_attention_mask_2=mask_2,
                image_embeds=torch.randn(batch, 5, 24, generator=g))


def qwenimage21_call(batch: int = 1, seed: int = 1):
    """An edit call without the KV cache: a 4×4 condition image, then the 4×4 target; 12 prompt positions (3 text,
    4 image slots, 5 text of which 2 padded); the target's slots appended to ``img_mask``; t/1000."""
    g, h, w = _gen(seed), 4, 4
    slots = torch.tensor([False] * 3 + [True] * 4 + [False] * 5)
    text_mask = torch.ones(batch, 12, dtype=torch.bool)
    text_mask[:, -2:] = False
    return dict(hidden_states=torch.randn(batch, 2 * h * w, 16, generator=g),
                encoder_hidden_states=torch.randn(batch, 12, 32, generator=g), encoder_hidden_states_mask=text_mask,
                timestep=torch.full((batch,), 0.7), img_shapes=[[(1, h, w), (1, h, w)]] * batch,
                img_mask=torch.cat([slots, torch.ones(h * w // 4, dtype=torch.bool)]).repeat(batch, 1))


HEADS = dict(num_attention_heads=2, attention_head_dim=16)
WAN_BLOCKS = dict(HEADS, patch_size=(1, 2, 2), text_dim=32, freq_dim=64, ffn_dim=64, num_layers=4,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=32)

CASES = {
    "ChromaTransformer2DModel": (lambda: _model("ChromaTransformer2DModel", dict(
        HEADS, patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6), approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=1)),
        chroma_call),
    "Flux2Transformer2DModel": (lambda: _model("Flux2Transformer2DModel", dict(
        HEADS, patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, joint_attention_dim=32,
        timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True)), flux2_call),
    "QwenImageTransformer2DModel": (lambda: _model("QwenImageTransformer2DModel", dict(
        HEADS, patch_size=2, in_channels=16, out_channels=4, num_layers=3, joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6))), qwenimage_call),
    "CogView4Transformer2DModel": (lambda: _model("CogView4Transformer2DModel", dict(
        HEADS, patch_size=2, in_channels=4, out_channels=4, num_layers=4, text_embed_dim=32, time_embed_dim=32,
        condition_dim=16, pos_embed_max_size=16, sample_size=16, rope_axes_dim=(16, 16))), cogview4_call),
    "SD3Transformer2DModel": (lambda: _model("SD3Transformer2DModel", dict(
        HEADS, sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=4, joint_attention_dim=32,
        caption_projection_dim=32, pooled_projection_dim=16, pos_embed_max_size=8, dual_attention_layers=(0, 1),
        qk_norm="rms_norm")), sd3_call),
    "SanaTransformer2DModel": (lambda: _model("SanaTransformer2DModel", dict(
        HEADS, in_channels=4, out_channels=4, num_layers=4, num_cross_attention_heads=2, cross_attention_head_dim=16,
        cross_attention_dim=32, caption_channels=32, mlp_ratio=2.5, sample_size=8, patch_size=1)), sana_call),
    "Lumina2Transformer2DModel": (lambda: _model("Lumina2Transformer2DModel", dict(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=4, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, norm_eps=1e-5, axes_dim_rope=(4, 6, 6),
        axes_lens=(64, 32, 32), cap_feat_dim=32)), lumina2_call),
    "CogVideoXTransformer3DModel": (lambda: _model("CogVideoXTransformer3DModel", dict(
        HEADS, in_channels=4, out_channels=4, time_embed_dim=32, text_embed_dim=32, num_layers=4, sample_width=8,
        sample_height=8, sample_frames=5, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=8)),
        cogvideox_call),
    "MochiTransformer3DModel": (mochi_model, mochi_call),
    "LTXVideoTransformer3DModel": (lambda: _model("LTXVideoTransformer3DModel", dict(
        HEADS, in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, cross_attention_dim=32, num_layers=3,
        caption_channels=16)), ltx_call),
    "SkyReelsV2Transformer3DModel": (lambda: _model("SkyReelsV2Transformer3DModel", dict(
        WAN_BLOCKS, in_channels=4, out_channels=4)), skyreels_call),
    "ZImageTransformer2DModel": (lambda: _model("ZImageTransformer2DModel", dict(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=4, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=32, rope_theta=256.0, t_scale=1000.0,
        axes_dims=[4, 6, 6], axes_lens=[128, 32, 32])), z_image_call),
    "WanVACETransformer3DModel": (lambda: _model("WanVACETransformer3DModel", dict(
        WAN_BLOCKS, in_channels=4, out_channels=4, vace_layers=[0, 2, 3], vace_in_channels=8)), wan_vace_call),
    "ChronoEditTransformer3DModel": (lambda: _model("ChronoEditTransformer3DModel", dict(
        WAN_BLOCKS, in_channels=8, out_channels=4)), chronoedit_call),
    "HunyuanVideo15Transformer3DModel": (lambda: _model("HunyuanVideo15Transformer3DModel", dict(
        HEADS, in_channels=9, out_channels=4, num_layers=3, num_refiner_layers=1, patch_size=1, patch_size_t=1,
        text_embed_dim=32, text_embed_2_dim=24, image_embed_dim=24, rope_axes_dim=(4, 6, 6))), hunyuan_video15_call),
    "QwenImage21Transformer2DModel": (lambda: _model("QwenImage21Transformer2DModel", dict(
        HEADS, patch_size=1, in_channels=16, out_channels=16, num_layers=3, context_in_dim=32,
        axes_dims_rope=(4, 6, 6))), qwenimage21_call),
    "HunyuanVideoFramepackTransformer3DModel": (lambda: _model("HunyuanVideoFramepackTransformer3DModel", dict(
        HEADS, in_channels=4, out_channels=4, num_layers=2, num_single_layers=2, num_refiner_layers=1,
        patch_size=2, patch_size_t=1, guidance_embeds=True, text_embed_dim=32, pooled_projection_dim=16,
        rope_axes_dim=(4, 6, 6), has_image_proj=True, image_proj_dim=24, has_clean_x_embedder=True)),
        framepack_call),
}
