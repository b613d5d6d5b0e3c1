"""Train a zoo model from scratch (class-conditional, with condition dropout).

Objective of the flow-matching models (as Flux / Wan / diffusers' ``FlowMatchEulerDiscreteScheduler``):
``x_σ = (1 − σ)·x0 + σ·ε``, the transformer predicts the velocity ``ε − x0``;
σ is drawn half from a logit-normal(0, 1) and half uniformly on (0, 1).
``objective="v"`` (CogVideoX): the scheduler's own DDPM noising at a timestep drawn uniformly from its training
timesteps, ``x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε``, and the transformer predicts ``v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0``
(``add_noise`` / ``get_velocity`` of the scheduler the pipeline samples with).
With probability ``p_uncond`` the class is replaced by the learned null class,
so classifier-free guidance works at sampling time.

The class conditioning lives outside the transformer (it only ever sees
``encoder_hidden_states`` / ``pooled_projections``, as with a text encoder):
a learned table of ``text_tokens`` embeddings per class (+ the null class),
shipped as ``class_embeddings.safetensors`` next to the transformer.

Everything random comes from one seeded ``torch.Generator``; with one thread
on the same machine the run is bit-for-bit reproducible. The shipped weights
are the EMA of the trained weights, stored in ``recipe.weight_dtype``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from typing import Dict, Optional

import torch

from ._specs import NULL_CLASS, NUM_CLASSES, encode, get_spec, training_forward

CLASS_EMBEDDINGS_FILE = "class_embeddings.safetensors"
TRAINING_INFO_FILE = "training.json"


class ClassEmbeddings(torch.nn.Module):
    """Per-class ``encoder_hidden_states`` (and ``pooled_projections``); row ``NULL_CLASS`` is the null condition."""

    def __init__(self, tokens: int, dim: int, pooled_dim: Optional[int]):
        super().__init__()
        self.prompt_embeds = torch.nn.Parameter(torch.randn(NUM_CLASSES + 1, tokens, dim) * 0.5)
        self.pooled_prompt_embeds = (
            torch.nn.Parameter(torch.randn(NUM_CLASSES + 1, pooled_dim) * 0.5) if pooled_dim else None
        )

    def forward(self, labels: torch.Tensor):
        pooled = self.pooled_prompt_embeds[labels] if self.pooled_prompt_embeds is not None else None
        return self.prompt_embeds[labels], pooled


def _make_batch_source(name: str, generator: torch.Generator):
    """A function ``batch(B) -> (pixels, labels)`` drawing from load_digits with ``generator``."""
    from . import _data

    spec = get_spec(name)
    if not spec.video:
        images, labels = _data.image_dataset(spec.pixel_shape[-1])

        def batch(b):
            idx = torch.randint(0, images.shape[0], (b,), generator=generator)
            return images[idx], labels[idx]

        return batch
    if spec.video:
        sprites, labels = _data.digit_sprites(10)
        frames, size = spec.pixel_shape[0], spec.pixel_shape[-1]

        def batch(b):
            idx = torch.randint(0, sprites.shape[0], (b,), generator=generator)
            return _data.moving_digit_clips(sprites[idx], frames, size, generator), labels[idx]

        return batch
    raise KeyError(name)


def _sample_sigma(b: int, generator: torch.Generator) -> torch.Tensor:
    logit_normal = torch.sigmoid(torch.randn(b, generator=generator))
    uniform = torch.rand(b, generator=generator)
    pick = torch.rand(b, generator=generator) < 0.5
    return torch.where(pick, logit_normal, uniform).clamp(1e-4, 1.0 - 1e-4)


def _noising(name: str, generator: torch.Generator):
    """``noising(x0, noise) -> (x_t, noise level passed to the model, target)`` for the model's objective."""
    spec = get_spec(name)
    if spec.objective == "flow":

        def flow(x0, noise):
            sigma = _sample_sigma(x0.shape[0], generator)
            s = sigma.view(-1, *([1] * (x0.dim() - 1)))
            return (1.0 - s) * x0 + s * noise, sigma, noise - x0

        return flow
    if spec.objective == "v":
        from . import make_scheduler

        scheduler = make_scheduler(name)
        n = scheduler.config.num_train_timesteps

        def v(x0, noise):
            t = torch.randint(0, n, (x0.shape[0],), generator=generator)
            return scheduler.add_noise(x0, noise, t), t, scheduler.get_velocity(x0, noise, t)

        return v
    raise ValueError(f"{name}: objective must be 'flow' or 'v', got {spec.objective!r}")


def train(
    name: str,
    steps: Optional[int] = None,
    out_dir: Optional[str] = None,
    seed: Optional[int] = None,
    batch_size: Optional[int] = None,
    threads: int = 1,
    progress: bool = True,
) -> Dict[str, float]:
    """Train ``name`` from scratch and write ``config.json``, the safetensors and the class embeddings to ``out_dir``.

    Defaults (``steps``, ``seed``, ``batch_size`` None) reproduce the shipped weights.
    Returns the ``training.json`` dict: ``final_loss`` (mean of the last 100 steps), ``train_seconds`` (wall),
    ``cpu_seconds`` (process CPU time), ``steps``, …
    """
    import diffusers
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    spec = get_spec(name)
    recipe = spec.train
    steps = recipe.steps if steps is None else int(steps)
    seed = recipe.seed if seed is None else int(seed)
    bsz = recipe.batch_size if batch_size is None else int(batch_size)
    if out_dir is None:
        from . import weights_dir

        out_dir = weights_dir(name)

    torch.set_num_threads(threads)
    torch.manual_seed(seed)  # parameter initialisation
    gen = torch.Generator().manual_seed(seed)  # everything else

    model = getattr(diffusers, spec.transformer_class)(**spec.config)
    embeds = ClassEmbeddings(spec.text_tokens, spec.text_dim, spec.pooled_dim)
    model.train()
    params = list(model.parameters()) + list(embeds.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, betas=(0.9, 0.99), weight_decay=0.0)

    def lr_at(step):  # linear warm-up, cosine decay to 10 %
        if step < recipe.warmup:
            return recipe.lr * (step + 1) / recipe.warmup
        t = (step - recipe.warmup) / max(1, steps - recipe.warmup)
        return recipe.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))

    ema_model = copy.deepcopy(model).requires_grad_(False)
    ema_embeds = copy.deepcopy(embeds).requires_grad_(False)
    ema_params = list(ema_model.parameters()) + list(ema_embeds.parameters())

    batch = _make_batch_source(name, gen)
    noising = _noising(name, gen)
    cache: Dict = {}
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(range(steps), desc=f"train {name}", disable=not progress, dynamic_ncols=True)
    for step in bar:
        pixels, labels = batch(bsz)
        drop = torch.rand(bsz, generator=gen) < recipe.p_uncond
        labels = torch.where(drop, torch.full_like(labels, NULL_CLASS), labels)
        x0 = encode(name, pixels)
        noise = torch.randn(x0.shape, generator=gen)
        xt, level, target = noising(x0, noise)
        prompt_embeds, pooled = embeds(labels)
        pred = training_forward(name, model, xt, level, prompt_embeds, pooled, cache)
        loss = torch.nn.functional.mse_loss(pred, target)

        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(recipe.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)

        losses.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
    bar.close()
    train_seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0  # = one core's busy time with threads=1, unaffected by other load
    final_loss = sum(losses[-100:]) / max(1, len(losses[-100:]))

    os.makedirs(out_dir, exist_ok=True)
    dtype = getattr(torch, recipe.weight_dtype)
    # Store in ``dtype``, except the modules diffusers keeps in float32 (Wan's norms, time embedder,
    # scale-shift tables): exactly what ``from_pretrained(torch_dtype=dtype)`` would give.
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    state = {
        k: (v if any(m in k.split(".") for m in keep) else v.to(dtype)).detach().contiguous()
        for k, v in ema_model.state_dict().items()
    }
    ema_model.save_config(out_dir)
    save_file(state, os.path.join(out_dir, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    tensors = {"prompt_embeds": ema_embeds.prompt_embeds.detach().to(dtype).contiguous()}
    if ema_embeds.pooled_prompt_embeds is not None:
        tensors["pooled_prompt_embeds"] = ema_embeds.pooled_prompt_embeds.detach().to(dtype).contiguous()
    save_file(tensors, os.path.join(out_dir, CLASS_EMBEDDINGS_FILE))
    info = dict(
        name=name,
        steps=steps,
        batch_size=bsz,
        seed=seed,
        lr=recipe.lr,
        ema_decay=recipe.ema_decay,
        p_uncond=recipe.p_uncond,
        threads=threads,
        final_loss=round(final_loss, 5),
        train_seconds=round(train_seconds, 1),
        cpu_seconds=round(cpu_seconds, 1),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    with open(os.path.join(out_dir, TRAINING_INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return info
