"""A small zoo of trained diffusion transformers in the real diffusers classes.

Caching methods should be judged on real denoising trajectories, not on random
weights. The zoo ships five tiny class-conditional models trained on
scikit-learn's ``load_digits()``:

================  ==================================  ==========================================
name              transformer                         sample
================  ==================================  ==========================================
flux_digits       ``FluxTransformer2DModel``          16×16 grey digit, 2 double + 6 single blocks
wan_digits        ``WanTransformer3DModel``           8 frames of 16×16, a digit moving; 6 blocks
hunyuan_digits    ``HunyuanVideoTransformer3DModel``  the same clips; 2 double + 4 single blocks
sd3_digits        ``SD3Transformer2DModel``           16×16 grey digit, 6 joint blocks
cogvideox_digits  ``CogVideoXTransformer3DModel``     the same clips; 5 blocks; DDIM, v-prediction
================  ==================================  ==========================================

All sample through the real diffusers pipelines (``FluxPipeline`` and
``HunyuanVideoPipeline`` with true classifier-free guidance, ``WanPipeline``, ``StableDiffusion3Pipeline``,
``CogVideoXPipeline``), so every transformer call happens exactly as in the big models: inside
``transformer.cache_context("cond")`` / ``("uncond")``, or, in SD3's and CogVideoX's pipelines, one call per step
with both halves of the guidance batched::

    from dicache import zoo
    tr = zoo.load("flux_digits")            # diffusers' own from_pretrained, offline
    imgs = zoo.sample("flux_digits", [0, 1, 2], seed=0, transformer=tr)  # (3, 16, 16) in [0, 1]
    zoo.save_grid(imgs, "digits.png")

Nothing is downloaded: weights, configs and class embeddings are package data.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch

from ._specs import NULL_CLASS, NUM_CLASSES, SPECS, decode, encode, get_spec

NAMES = tuple(SPECS)

__all__ = [
    "NAMES",
    "NUM_CLASSES",
    "NULL_CLASS",
    "weights_dir",
    "load",
    "class_embeddings",
    "conditioning",
    "make_scheduler",
    "pipeline",
    "pipeline_call_kwargs",
    "sample",
    "make_grid",
    "save_grid",
    "encode",
    "decode",
    "images",
    "class_accuracy",
    "save_samples_grid",
]

_HERE = os.path.dirname(os.path.abspath(__file__))


def weights_dir(name: str) -> str:
    """Directory of the shipped model ``name`` (``config.json``, safetensors, class embeddings)."""
    get_spec(name)
    return os.path.join(_HERE, "weights", name)


def load(
    name: str,
    torch_dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
    path: Optional[str] = None,
) -> torch.nn.Module:
    """The transformer, loaded with diffusers' own ``from_pretrained`` from the package directory (offline).

    The weights are stored in float16 (Wan's float32-kept modules in float32) and
    upcast to ``torch_dtype`` (float32 by default). ``path`` loads a directory
    written by ``scripts/train_zoo.py --out`` instead.

    diffusers' ``from_pretrained`` refuses models with ``_keep_in_fp32_modules``
    (Wan) when ``accelerate`` is not installed; then the same config and
    safetensors are loaded through ``from_config`` + ``load_state_dict`` instead
    (same weights, same dtypes).
    """
    import diffusers
    from diffusers.utils import is_accelerate_available

    spec = get_spec(name)
    cls = getattr(diffusers, spec.transformer_class)
    d = path or weights_dir(name)
    if getattr(cls, "_keep_in_fp32_modules", None) and not is_accelerate_available():
        model = _load_without_accelerate(cls, d, torch_dtype)
    else:
        model = cls.from_pretrained(d, torch_dtype=torch_dtype, local_files_only=True)
    return model.to(device).eval()


def _load_without_accelerate(cls, directory: str, torch_dtype: torch.dtype) -> torch.nn.Module:
    from safetensors.torch import load_file

    model = cls.from_config(cls.load_config(directory))
    state = load_file(os.path.join(directory, "diffusion_pytorch_model.safetensors"))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    keep = tuple(cls._keep_in_fp32_modules or ())

    def kept(n: str) -> bool:  # what from_pretrained does: these stay float32
        return any(m in n.split(".") for m in keep)

    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not kept(n):
            t.data = t.data.to(torch_dtype)
    return model


def class_embeddings(name: str, path: Optional[str] = None, dtype: torch.dtype = torch.float32):
    """The learned conditioning table: ``prompt_embeds`` ``(11, T, D)`` and ``pooled_prompt_embeds`` ``(11, P)`` or None.

    Row ``NULL_CLASS`` (10) is the null condition used for the unconditional branch.
    """
    from safetensors.torch import load_file

    from .train import CLASS_EMBEDDINGS_FILE

    t = load_file(os.path.join(path or weights_dir(name), CLASS_EMBEDDINGS_FILE))
    pooled = t.get("pooled_prompt_embeds")
    return t["prompt_embeds"].to(dtype), (pooled.to(dtype) if pooled is not None else None)


def conditioning(name: str, labels: Sequence[int], path: Optional[str] = None, dtype: torch.dtype = torch.float32):
    """``(prompt_embeds, pooled, negative_prompt_embeds, negative_pooled)`` for class ``labels`` (pooled: Flux only)."""
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    if labels.numel() == 0 or labels.min() < 0 or labels.max() > NULL_CLASS:
        raise ValueError(f"labels must be class indices in [0, {NULL_CLASS}], got {labels.tolist()}")
    table, pooled_table = class_embeddings(name, path, dtype)
    null = torch.full_like(labels, NULL_CLASS)
    pooled = pooled_table[labels] if pooled_table is not None else None
    neg_pooled = pooled_table[null] if pooled_table is not None else None
    return table[labels], pooled, table[null], neg_pooled


def make_scheduler(name: str):
    """A fresh instance of the model's diffusers scheduler (FlowMatchEuler for Flux, UniPC flow for Wan)."""
    import diffusers

    spec = get_spec(name)
    return getattr(diffusers, spec.scheduler_class)(**spec.scheduler_config)


def pipeline(name: str, transformer: Optional[torch.nn.Module] = None, scheduler=None, progress: bool = False):
    """The real diffusers pipeline around the zoo transformer (no VAE, no text encoders).

    ``FluxPipeline`` / ``WanPipeline`` / ``HunyuanVideoPipeline`` / ``StableDiffusion3Pipeline`` /
    ``CogVideoXPipeline`` with ``vae=None`` and the text encoders and tokenizers set to None; call it with
    :func:`pipeline_call_kwargs` (``output_type="latent"``), then :func:`images` turns its output into images.
    """
    import diffusers

    spec = get_spec(name)
    transformer = transformer if transformer is not None else load(name)
    scheduler = scheduler if scheduler is not None else make_scheduler(name)
    if name == "flux_digits":
        pipe = diffusers.FluxPipeline(
            scheduler=scheduler,
            vae=None,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=transformer,
        )
    elif name == "wan_digits":
        pipe = diffusers.WanPipeline(
            tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=transformer
        )
    elif name == "hunyuan_digits":
        pipe = diffusers.HunyuanVideoPipeline(
            text_encoder=None, tokenizer=None, transformer=transformer, vae=None, scheduler=scheduler,
            text_encoder_2=None, tokenizer_2=None,
        )
    elif name == "sd3_digits":
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
            text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
        )
    elif name == "cogvideox_digits":
        pipe = diffusers.CogVideoXPipeline(
            tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=scheduler
        )
    else:  # pragma: no cover - get_spec raised already
        raise KeyError(name)
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


def pipeline_call_kwargs(
    name: str,
    labels: Sequence[int],
    seed: int = 0,
    num_inference_steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
    embeddings_path: Optional[str] = None,
) -> dict:
    """Keyword arguments for ``pipeline(name)(**kwargs)`` sampling ``labels`` (output_type="latent").

    ``guidance_scale`` ≤ 1 disables classifier-free guidance (one ``"cond"`` call per step).
    The initial noise comes from ``torch.Generator("cpu").manual_seed(seed)``.
    """
    spec = get_spec(name)
    steps = spec.default_steps if num_inference_steps is None else int(num_inference_steps)
    g = spec.default_guidance if guidance_scale is None else float(guidance_scale)
    cond, pooled, neg, neg_pooled = conditioning(name, labels, embeddings_path, dtype)
    cond, neg = cond.to(device), neg.to(device)
    kw = dict(spec.pipeline_kwargs)
    kw.update(
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(int(seed)),
        output_type="latent",
        return_dict=False,
    )
    kw.update(prompt_embeds=cond, negative_prompt_embeds=neg)
    if pooled is not None:  # Flux, HunyuanVideo, SD3
        kw.update(pooled_prompt_embeds=pooled.to(device), negative_pooled_prompt_embeds=neg_pooled.to(device))
    if name == "flux_digits":
        kw.update(true_cfg_scale=g)
    elif name == "hunyuan_digits":
        mask = torch.ones(cond.shape[:2], dtype=dtype, device=device)  # every class has all its tokens
        kw.update(prompt_attention_mask=mask, negative_prompt_attention_mask=mask.clone(), true_cfg_scale=g,
                  guidance_scale=1.0)  # no guidance embedding (guidance_embeds=False): unused
    else:  # Wan; SD3 and CogVideoX, whose classifier-free guidance is batched into one call per step
        kw.update(guidance_scale=g)
    return kw


def sample(
    name: str,
    labels: Sequence[int],
    seed: int = 0,
    num_inference_steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    transformer: Optional[torch.nn.Module] = None,
    scheduler=None,
    progress: bool = False,
    path: Optional[str] = None,
) -> torch.Tensor:
    """Sample class ``labels`` through the diffusers pipeline; images in [0, 1] on the CPU.

    Returns ``(N, 16, 16)`` for the image models (flux_digits, sd3_digits) and ``(N, 8, 16, 16)`` for the video models.
    Deterministic for a seed (one CPU generator draws the whole batch's noise,
    so a sample also depends on its position in ``labels``). Defaults:
    flux_digits 30 steps, true CFG 3.0; wan_digits 50 steps, CFG 4.0; hunyuan_digits 50 steps, true CFG 4.0;
    sd3_digits 28 steps, CFG 4.0 (batched); cogvideox_digits 50 steps, CFG 6.0 (batched).
    ``transformer`` may be a (hooked/cached) instance of the model; by default
    the shipped one is loaded. ``path``: a directory written by
    ``scripts/train_zoo.py --out`` to take the model and class embeddings from.
    """
    if transformer is None and path is not None:
        transformer = load(name, path=path)
    pipe = pipeline(name, transformer, scheduler, progress)
    tr = pipe.transformer
    p = next(tr.parameters())
    kw = pipeline_call_kwargs(name, labels, seed, num_inference_steps, guidance_scale, p.dtype, p.device, path)
    return images(name, pipe, pipe(**kw)[0], kw)


def images(name: str, pipe, latents: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """Images in [0, 1] on the CPU from the latents ``pipe(**kwargs)`` returned (``output_type="latent"``):
    Flux's packed tokens unpacked, CogVideoX's frames-first latent put channels first, then :func:`decode`."""
    if name == "flux_digits":
        latents = type(pipe)._unpack_latents(latents, kwargs["height"], kwargs["width"], pipe.vae_scale_factor)
    elif name == "cogvideox_digits":
        latents = latents.permute(0, 2, 1, 3, 4)
    return decode(name, latents).cpu()


def class_accuracy(name: str, samples: torch.Tensor, labels: Sequence[int]) -> float:
    """Fraction of samples a k-NN digit classifier assigns to the asked-for class (needs scikit-learn)."""
    from ._eval import class_accuracy as _acc

    return _acc(name, samples, labels)


def make_grid(images: torch.Tensor, nrow: Optional[int] = None, scale: int = 4, pad: int = 1) -> torch.Tensor:
    """Tile images ``(N, H, W)`` (``nrow`` per row) or videos ``(N, F, H, W)`` (one video per row, frames across).

    Returns a ``(rows·(H+pad)+pad, cols·(W+pad)+pad)`` float tensor in [0, 1], upscaled ``scale``× (nearest).
    """
    images = images.detach().float().cpu().clamp(0, 1)
    if images.dim() == 4:  # videos: a row per video
        n, f, h, w = images.shape
        tiles, cols = images.reshape(n * f, h, w), f
    elif images.dim() == 3:
        n, h, w = images.shape
        tiles, cols = images, (nrow or n)
    else:
        raise ValueError(f"expected (N, H, W) or (N, F, H, W), got {tuple(images.shape)}")
    tiles = tiles.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    h, w = h * scale, w * scale
    rows = -(-tiles.shape[0] // cols)
    grid = torch.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 0.5)
    for i in range(tiles.shape[0]):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = tiles[i]
    return grid


def save_grid(images: torch.Tensor, path: str, nrow: Optional[int] = None, scale: int = 4, pad: int = 1) -> str:
    """Write :func:`make_grid` as an 8-bit greyscale PNG; returns ``path``."""
    from PIL import Image

    grid = make_grid(images, nrow, scale, pad)
    arr = (grid * 255.0).round().to(torch.uint8).numpy()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)
    return path


def save_samples_grid(
    name: str,
    path: str,
    seed: int = 0,
    per_class: int = 8,
    num_inference_steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    transformer: Optional[torch.nn.Module] = None,
    weights: Optional[str] = None,
) -> str:
    """The docs grid: rows = classes 0–9.

    Image models: ``per_class`` samples per row. Video models: one clip per row, its 8 frames across.
    """
    if not get_spec(name).video:
        labels = [c for c in range(NUM_CLASSES) for _ in range(per_class)]
        nrow = per_class
    else:
        labels, nrow = list(range(NUM_CLASSES)), None
    out = sample(name, labels, seed, num_inference_steps, guidance_scale, transformer, path=weights)
    return save_grid(out, path, nrow=nrow)
