"""Tiny random-config diffusers models and pipelines, built offline, for the tests."""

from __future__ import annotations

import torch

FLUX_CONFIG = dict(
    patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)
WAN_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
    text_dim=32, freq_dim=64, ffn_dim=64, num_layers=4, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)
HUNYUAN_CONFIG = dict(
    in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
    num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
    text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6),
)


def _seeded(seed: int):
    return torch.Generator().manual_seed(seed)


def flux_transformer(seed: int = 0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**FLUX_CONFIG).eval()


def wan_transformer(seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**WAN_CONFIG).eval()


def hunyuan_transformer(seed: int = 0):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    return HunyuanVideoTransformer3DModel(**HUNYUAN_CONFIG).eval()


# -- bare sampling loops (Euler on a flow-matching line, no cache_context) ----

def flux_inputs(batch: int = 1, seed: int = 1):
    g = _seeded(seed)
    n_img, n_txt = 16, 8
    return dict(
        hidden_states=torch.randn(batch, n_img, 16, generator=g),
        encoder_hidden_states=torch.randn(batch, n_txt, 32, generator=g),
        pooled_projections=torch.randn(batch, 16, generator=g),
        img_ids=torch.zeros(n_img, 3),
        txt_ids=torch.zeros(n_txt, 3),
        guidance=torch.full((batch,), 3.5),
    )


def flux_loop(model, steps: int = 8, batch: int = 1, seed: int = 1, context: bool = False):
    inputs = flux_inputs(batch, seed)
    x = inputs.pop("hidden_states")
    sigmas = torch.linspace(1.0, 1.0 / steps, steps)
    with torch.no_grad():
        for i, s in enumerate(sigmas):
            kwargs = dict(inputs, hidden_states=x, timestep=s.expand(batch), return_dict=False)
            if context:
                with model.cache_context("cond", step_index=i, num_inference_steps=steps):
                    v = model(**kwargs)[0]
            else:
                v = model(**kwargs)[0]
            nxt = sigmas[i + 1] if i + 1 < steps else torch.tensor(0.0)
            x = x + (nxt - s) * v
    return x


def video_inputs(batch: int = 1, seed: int = 1, channels: int = 4):
    g = _seeded(seed)
    return torch.randn(batch, channels, 2, 8, 8, generator=g), torch.randn(batch, 8, 32, generator=g)


def wan_loop(model, steps: int = 8, batch: int = 1, seed: int = 1, cfg: float = 0.0, uncond_scale: float = 1.0):
    """Euler loop; with ``cfg`` > 0 two calls per step (cond then uncond, no cache_context).

    ``uncond_scale`` scales the uncond branch's text embedding, to make its decisions differ.
    """
    x, text = video_inputs(batch, seed)
    timesteps = torch.linspace(1000.0, 1000.0 / steps, steps)
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            v = model(hidden_states=x, timestep=t.expand(batch), encoder_hidden_states=text, return_dict=False)[0]
            if cfg:
                u = model(hidden_states=x, timestep=t.expand(batch), encoder_hidden_states=text * uncond_scale,
                          return_dict=False)[0]
                v = u + cfg * (v - u)
            nxt = timesteps[i + 1] if i + 1 < steps else torch.tensor(0.0)
            x = x + (nxt - t) / 1000.0 * v
    return x


def hunyuan_loop(model, steps: int = 8, batch: int = 1, seed: int = 1):
    x, text = video_inputs(batch, seed)
    g = _seeded(seed + 1)
    pooled = torch.randn(batch, 16, generator=g)
    mask = torch.ones(batch, text.shape[1], dtype=torch.bool)
    timesteps = torch.linspace(1000.0, 1000.0 / steps, steps)
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            v = model(hidden_states=x, timestep=t.expand(batch), encoder_hidden_states=text,
                      encoder_attention_mask=mask, pooled_projections=pooled,
                      guidance=torch.full((batch,), 6000.0), return_dict=False)[0]
            nxt = timesteps[i + 1] if i + 1 < steps else torch.tensor(0.0)
            x = x + (nxt - t) / 1000.0 * v
    return x


# -- whole pipelines (no text encoders, no hub) --------------------------------

def flux_pipeline(seed: int = 0):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
        norm_num_groups=4, sample_size=32,
    ).eval()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, transformer=flux_transformer(seed),
    )


def flux_pipeline_call(pipe, steps: int = 6, seed: int = 3, batch: int = 1, guidance_scale: float = 0.0):
    g = _seeded(100)
    return pipe(
        prompt_embeds=torch.randn(batch, 8, 32, generator=g).to(pipe.device),
        pooled_prompt_embeds=torch.randn(batch, 16, generator=g).to(pipe.device),
        height=16, width=16, num_inference_steps=steps, generator=_seeded(seed), output_type="latent",
        guidance_scale=3.5,
    ).images


def wan_pipeline(seed: int = 0):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    return WanPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=wan_transformer(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def wan_pipeline_call(pipe, steps: int = 6, seed: int = 3, negative_scale: float = 1.0, guidance_scale: float = 4.0):
    g = _seeded(100)
    pos = torch.randn(1, 8, 32, generator=g).to(pipe.device)
    neg = (torch.randn(1, 8, 32, generator=g) * negative_scale).to(pipe.device)
    return pipe(
        prompt_embeds=pos, negative_prompt_embeds=neg, height=16, width=16, num_frames=5,
        num_inference_steps=steps, guidance_scale=guidance_scale, generator=_seeded(seed), output_type="latent",
    ).frames


def hunyuan_pipeline(seed: int = 0):
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
        norm_num_groups=2, spatial_compression_ratio=8, temporal_compression_ratio=4,
    ).eval()
    return HunyuanVideoPipeline(
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, vae=vae,
        transformer=hunyuan_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )


def hunyuan_pipeline_call(pipe, steps: int = 6, seed: int = 3):
    g = _seeded(100)
    return pipe(
        prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 16, generator=g),
        prompt_attention_mask=torch.ones(1, 8, dtype=torch.long), height=32, width=32, num_frames=1,
        num_inference_steps=steps, generator=_seeded(seed), output_type="latent",
    ).frames


# -- one call of each built-in family's transformer (tests/test_adapters.py) --------------------------------

def flux_call(batch: int = 1, seed: int = 1):
    return dict(flux_inputs(batch, seed), timestep=torch.full((batch,), 0.5))


def wan_call(batch: int = 1, seed: int = 1):
    x, text = video_inputs(batch, seed)
    return dict(hidden_states=x, timestep=torch.full((batch,), 500.0), encoder_hidden_states=text)


def hunyuan_call(batch: int = 1, seed: int = 1):
    x, text = video_inputs(batch, seed)
    return dict(hidden_states=x, timestep=torch.full((batch,), 500.0), encoder_hidden_states=text,
                encoder_attention_mask=torch.ones(batch, text.shape[1], dtype=torch.bool),
                pooled_projections=torch.randn(batch, 16, generator=_seeded(seed + 1)),
                guidance=torch.full((batch,), 6000.0))


#: model class name -> (tiny model, forward kwargs of one call)
ADAPTER_CASES = {
    "FluxTransformer2DModel": (flux_transformer, flux_call),
    "WanTransformer3DModel": (wan_transformer, wan_call),
    "HunyuanVideoTransformer3DModel": (hunyuan_transformer, hunyuan_call),
}
