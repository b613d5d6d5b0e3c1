"""What each zoo model is: transformer config, latent format, scheduler, pipeline, training recipe.

The models work directly on pixels (there is no learned VAE):

* ``flux_digits`` — 16×16 grey digits in [-1, 1] are the latent ``(B, 1, 16, 16)``;
  ``FluxPipeline`` packs it into 2×2 patches exactly like a real Flux latent:
  64 image tokens of 4 channels (``in_channels=4``).
* ``wan_digits`` — 8-frame 16×16 clips in [-1, 1]; the fixed, lossless
  "VAE" is a 2×2 space-to-depth (``pixel_unshuffle``): latent ``(B, 4, 8, 8, 8)``
  (channels, frames, height, width), patchified by Wan's own ``(1, 2, 2)``
  patch embedding into 8 × 4 × 4 = 128 video tokens.
* ``hunyuan_digits`` — the same clips and latent as ``wan_digits``, patchified by
  HunyuanVideo's ``patch_size=2, patch_size_t=1`` into the same 128 video tokens;
  text tokens pass HunyuanVideo's token refiner, with an attention mask, as in the real model.
* ``sd3_digits`` — the latent of ``flux_digits``, ``(B, 1, 16, 16)``, patchified by SD3's own 2×2 patch
  embedding into the same 64 image tokens; ``StableDiffusion3Pipeline`` batches the two halves of
  classifier-free guidance into one transformer call per step.
* ``cogvideox_digits`` — the clips and latent of ``wan_digits``, which ``CogVideoXPipeline`` holds frames first,
  ``(B, F, C, H, W)``; CogVideoX-2b's 2×2 patches and 3-D sin-cos positions give the same 128 video tokens after the
  text's 4. Not a flow-matching model: CogVideoX-2b's DDIM scheduler (v-prediction on a DDPM noise schedule with
  zero terminal SNR), classifier-free guidance batched as in SD3.

The pipelines are built with ``vae=None``; they then assume a VAE scale factor
of 8 (spatial) and 4 (temporal, Wan), which is why the pipeline is called with
``height = 8 × latent height`` and ``num_frames = 4 × (latent frames − 1) + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # index of the learned "no condition" embedding (classifier-free guidance)


@dataclass(frozen=True)
class TrainRecipe:
    steps: int
    batch_size: int
    lr: float
    warmup: int
    ema_decay: float
    p_uncond: float
    seed: int
    weight_dtype: str = "float16"  # dtype of the shipped safetensors


@dataclass(frozen=True)
class ZooSpec:
    name: str
    transformer_class: str  # attribute of ``diffusers``
    config: Dict[str, Any]
    text_tokens: int  # tokens of the per-class ``encoder_hidden_states``
    text_dim: int
    pooled_dim: Optional[int]  # ``pooled_projections`` width (Flux) or None
    pixel_shape: Tuple[int, ...]  # one sample: (H, W) or (F, H, W)
    pipeline_kwargs: Dict[str, Any]  # height/width/num_frames passed to the pipeline
    default_steps: int
    default_guidance: float
    train: TrainRecipe
    scheduler_config: Dict[str, Any] = field(default_factory=dict)
    scheduler_class: str = "FlowMatchEulerDiscreteScheduler"
    cfg_batched: bool = False  # the pipeline runs both halves of the guidance in one call per step (SD3, CogVideoX)
    objective: str = "flow"  # "flow": rectified flow (velocity, σ); "v": v-prediction on the scheduler's DDPM alphas

    @property
    def video(self) -> bool:
        """Clips ``(F, H, W)`` in the 2×2 space-to-depth latent, rather than images ``(H, W)``."""
        return len(self.pixel_shape) == 3


def _clips() -> Dict[str, Any]:
    """What the three video models share: 8-frame 16×16 digit clips, ``(F, H, W)`` pixels in a 2×2 space-to-depth
    latent of 8 × 8 × 8, asked of the pipeline as 64×64 pixels and 29 frames (its assumed VAE: 8× in space, 4× in
    time), and 4 text tokens of width 64 per class."""
    return dict(text_tokens=4, text_dim=64, pixel_shape=(8, 16, 16),
                pipeline_kwargs=dict(height=64, width=64, num_frames=29))


FLUX_DIGITS = ZooSpec(
    name="flux_digits",
    transformer_class="FluxTransformer2DModel",
    config=dict(
        patch_size=1,
        in_channels=4,
        out_channels=None,
        num_layers=2,
        num_single_layers=6,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),
    ),
    text_tokens=4,
    text_dim=64,
    pooled_dim=32,
    pixel_shape=(16, 16),
    pipeline_kwargs=dict(height=128, width=128),  # 16×16 latent with the pipeline's assumed VAE factor 8
    default_steps=30,
    default_guidance=3.0,
    # FLUX.1-dev's scheduler config (dynamic shifting; at 64 tokens mu ≈ 0.47, i.e. a shift of ≈ 1.6)
    scheduler_config=dict(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    ),
    train=TrainRecipe(
        steps=1500, batch_size=32, lr=1e-3, warmup=100, ema_decay=0.998, p_uncond=0.1, seed=0
    ),
)

WAN_DIGITS = ZooSpec(
    name="wan_digits",
    transformer_class="WanTransformer3DModel",
    config=dict(
        patch_size=(1, 2, 2),
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=4,
        out_channels=4,
        text_dim=64,
        freq_dim=256,
        ffn_dim=512,
        num_layers=6,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ),
    **_clips(),
    pooled_dim=None,
    default_steps=50,
    default_guidance=4.0,
    # Wan 2.1's own scheduler: UniPC on flow sigmas with a flow shift
    scheduler_class="UniPCMultistepScheduler",
    scheduler_config=dict(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
    ),
    train=TrainRecipe(
        steps=2200, batch_size=16, lr=1e-3, warmup=100, ema_decay=0.998, p_uncond=0.1, seed=0
    ),
)

HUNYUAN_DIGITS = ZooSpec(
    name="hunyuan_digits",
    transformer_class="HunyuanVideoTransformer3DModel",
    config=dict(
        in_channels=4,
        out_channels=4,
        num_attention_heads=4,
        attention_head_dim=32,
        num_layers=2,
        num_single_layers=4,
        num_refiner_layers=1,
        mlp_ratio=4.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=False,  # true classifier-free guidance (two calls a step), not a distilled guidance
        text_embed_dim=64,
        pooled_projection_dim=32,
        rope_theta=256.0,
        rope_axes_dim=(8, 12, 12),
    ),
    **_clips(),
    pooled_dim=32,
    default_steps=50,
    default_guidance=4.0,
    # HunyuanVideo's scheduler: flow-matching Euler with a fixed shift of 7
    scheduler_config=dict(num_train_timesteps=1000, shift=7.0),
    train=TrainRecipe(
        steps=2400, batch_size=16, lr=1e-3, warmup=100, ema_decay=0.998, p_uncond=0.1, seed=0
    ),
)

SD3_DIGITS = ZooSpec(
    name="sd3_digits",
    transformer_class="SD3Transformer2DModel",
    config=dict(
        sample_size=16,
        patch_size=2,
        in_channels=1,
        out_channels=1,
        num_layers=6,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=128,  # = heads × head dim: the text stream's width in the joint blocks
        pooled_projection_dim=32,
        pos_embed_max_size=16,
        qk_norm="rms_norm",
    ),
    text_tokens=4,
    text_dim=64,
    pooled_dim=32,
    pixel_shape=(16, 16),
    pipeline_kwargs=dict(height=128, width=128),  # the same 16×16 latent as flux_digits, in SD3's 2×2 patches
    default_steps=28,  # StableDiffusion3Pipeline's own default
    default_guidance=4.0,
    # SD3's scheduler: flow-matching Euler with a fixed shift of 3
    scheduler_config=dict(num_train_timesteps=1000, shift=3.0),
    cfg_batched=True,
    train=TrainRecipe(
        steps=2000, batch_size=32, lr=1e-3, warmup=100, ema_decay=0.998, p_uncond=0.1, seed=0
    ),
)

COGVIDEOX_DIGITS = ZooSpec(
    name="cogvideox_digits",
    transformer_class="CogVideoXTransformer3DModel",
    config=dict(
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=4,
        out_channels=4,
        time_embed_dim=64,
        text_embed_dim=64,
        num_layers=5,  # 1.5 M parameters: the five models' weights stay under 24 MiB
        sample_width=8,  # latent 8×8, 29 pixel frames (8 latent frames): the positions are computed at this size
        sample_height=8,
        sample_frames=29,
        patch_size=2,
        max_text_seq_length=4,  # = text_tokens: the model adds positions to exactly this many text tokens
    ),
    **_clips(),
    pooled_dim=None,
    default_steps=50,  # CogVideoXPipeline's own default
    default_guidance=6.0,
    # CogVideoX-2b's scheduler: DDIM, v-prediction, zero terminal SNR, trailing timesteps, SNR shifted by 3
    scheduler_class="CogVideoXDDIMScheduler",
    scheduler_config=dict(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=True,
        snr_shift_scale=3.0,
    ),
    cfg_batched=True,
    objective="v",
    train=TrainRecipe(
        steps=2400, batch_size=16, lr=1e-3, warmup=100, ema_decay=0.998, p_uncond=0.1, seed=0
    ),
)

SPECS: Dict[str, ZooSpec] = {
    s.name: s for s in (FLUX_DIGITS, WAN_DIGITS, HUNYUAN_DIGITS, SD3_DIGITS, COGVIDEOX_DIGITS)
}


def get_spec(name: str) -> ZooSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; available: {sorted(SPECS)}") from None


# ---------------------------------------------------------------------------
# pixels <-> latents (the fixed "VAE")
# ---------------------------------------------------------------------------


def encode(name: str, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] to the model's (unpacked) latent in [-1, 1].

    Images (flux_digits): ``(B, H, W) -> (B, 1, H, W)``.
    Clips (wan_digits, hunyuan_digits): ``(B, F, H, W) -> (B, 4, F, H/2, W/2)`` (2×2 space-to-depth).
    """
    x = pixels * 2.0 - 1.0
    if not get_spec(name).video:
        return x[:, None]
    b, f, h, w = x.shape
    z = F.pixel_unshuffle(x.reshape(b * f, 1, h, w), 2)  # (B*F, 4, H/2, W/2)
    return z.reshape(b, f, 4, h // 2, w // 2).permute(0, 2, 1, 3, 4).contiguous()


def decode(name: str, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`encode`, clamped to [0, 1]: ``(B, H, W)`` or ``(B, F, H, W)``."""
    if not get_spec(name).video:
        x = latents[:, 0]
    else:
        b, c, f, h, w = latents.shape
        z = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        x = F.pixel_shuffle(z, 2).reshape(b, f, 2 * h, 2 * w)
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------
# transformer calls used in training, mirroring what the pipelines pass
# ---------------------------------------------------------------------------


def flux_ids(latent_h: int, latent_w: int, text_tokens: int, device=None, dtype=torch.float32):
    """``img_ids``/``txt_ids`` exactly as ``FluxPipeline`` builds them."""
    from diffusers import FluxPipeline

    img_ids = FluxPipeline._prepare_latent_image_ids(1, latent_h // 2, latent_w // 2, device, dtype)
    txt_ids = torch.zeros(text_tokens, 3, device=device, dtype=dtype)
    return img_ids, txt_ids


def training_forward(
    name: str,
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    sigma: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled_prompt_embeds: Optional[torch.Tensor],
    cache: Dict[str, Any],
) -> torch.Tensor:
    """The model's prediction for unpacked ``latents`` at noise level ``sigma`` (B,), as the pipeline calls it.

    Flux: the pipeline passes ``timestep = t / 1000 = sigma`` and packed latents.
    Wan, HunyuanVideo, SD3: the pipeline passes ``timestep = t = 1000 · sigma``; HunyuanVideo also the text
    tokens' attention mask (all ones here: every class has ``text_tokens`` tokens).
    CogVideoX (``objective="v"``): ``sigma`` is the integer DDPM timestep the pipeline passes; the prediction is v.
    """
    if name == "flux_digits":
        from diffusers import FluxPipeline

        b, c, h, w = latents.shape
        if "ids" not in cache:
            cache["ids"] = flux_ids(h, w, prompt_embeds.shape[1], latents.device, latents.dtype)
        img_ids, txt_ids = cache["ids"]
        packed = FluxPipeline._pack_latents(latents, b, c, h, w)
        out = transformer(
            hidden_states=packed,
            timestep=sigma,
            guidance=None,
            pooled_projections=pooled_prompt_embeds,
            encoder_hidden_states=prompt_embeds,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        # unpack (B, HW/4, 4C) -> (B, C, H, W)
        out = out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return out
    if name == "wan_digits":
        return transformer(
            hidden_states=latents,
            timestep=sigma * 1000.0,
            encoder_hidden_states=prompt_embeds,
            return_dict=False,
        )[0]
    if name == "hunyuan_digits":
        mask = torch.ones(prompt_embeds.shape[:2], dtype=prompt_embeds.dtype, device=prompt_embeds.device)
        return transformer(
            hidden_states=latents,
            timestep=sigma * 1000.0,
            encoder_hidden_states=prompt_embeds,
            encoder_attention_mask=mask,
            pooled_projections=pooled_prompt_embeds,
            return_dict=False,
        )[0]
    if name == "sd3_digits":
        return transformer(
            hidden_states=latents,
            timestep=sigma * 1000.0,
            encoder_hidden_states=prompt_embeds,
            pooled_projections=pooled_prompt_embeds,
            return_dict=False,
        )[0]
    if name == "cogvideox_digits":  # ``sigma`` is the DDPM timestep here; the pipeline holds the latent frames first
        out = transformer(
            hidden_states=latents.permute(0, 2, 1, 3, 4),
            timestep=sigma,
            encoder_hidden_states=prompt_embeds,
            return_dict=False,
        )[0]
        return out.permute(0, 2, 1, 3, 4)
    raise KeyError(name)
