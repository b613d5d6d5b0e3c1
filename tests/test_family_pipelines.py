"""DiCache through the real pipelines of four generic-preset families, each built offline on a tiny random transformer.

The pipelines call their transformer in different ways, and each way decides what dicache sees as a branch and as a
trajectory (``dicache/hooks.py``):

* ``StableDiffusion3Pipeline``: CFG batched into one call per step, no ``cache_context``: one branch, ``"default"``
  (calls at a new timestep start over at ``"default"``);
* ``QwenImagePipeline``: true CFG as two calls per step, in ``cache_context("cond")`` and ``("uncond")``;
* ``CogVideoXPipeline``: CFG batched in ``cache_context("cond_uncond")``, a DDIM-type scheduler (integer timesteps,
  no ``sigmas``);
* ``LTXPipeline``: CFG batched in ``cache_context("cond_uncond")``, a flow-matching scheduler.

For each: with δ = 0 the pipeline's output is bitwise its own; with δ huge, a warm-up of two calls and the last step
forced, each expected branch makes one call per step, computes the first two and the last and skips all the others;
the scheduler's ``set_timesteps`` starts a new trajectory at every pipeline call, so a second identical call gives
the bitwise identical output and the same pattern; ``disable`` restores the pipeline bitwise.

No text encoder, tokenizer or VAE: the prompt embeddings (and masks, pooled embeddings) are passed directly and the
latents are returned (``output_type="latent"``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, FrozenSet

import pytest
import torch

import dicache
from dicache.api import _step_sizes
from dicache.config import negligible_final_steps

import tiny_families

# the method's rule (DiCacheConfig()), not the generic default's: every call after the warm-up skips under a huge δ
SKIPPING = dict(backend="torch", config=dicache.DiCacheConfig(), threshold=1e9, warmup=2, force_last_step=1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _transformer(name: str) -> torch.nn.Module:
    return tiny_families.CASES[name][0]()


def _sd3():
    """8×8 latents in 2×2 patches: 16 image tokens; 8 text tokens; CFG batched (negative first)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=_transformer("SD3Transformer2DModel"), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None,
    )
    g = _gen(100)
    embeds = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g),
                  negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
                  pooled_prompt_embeds=torch.randn(1, 16, generator=g),
                  negative_pooled_prompt_embeds=torch.randn(1, 16, generator=g))

    def call(steps: int) -> torch.Tensor:
        # no VAE: the pipeline's scale factor is 8, so 64 pixels are 8 latents
        return pipe(**embeds, height=64, width=64, num_inference_steps=steps, guidance_scale=4.0,
                    generator=_gen(3), output_type="latent").images

    return pipe, call


def _qwenimage():
    """8×8 latents packed in 2×2: 16 image tokens; a negative prompt shorter than the prompt (a padded mask)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    pipe = QwenImagePipeline(transformer=_transformer("QwenImageTransformer2DModel"),
                             scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None)
    g = _gen(100)
    neg_mask = torch.ones(1, 8, dtype=torch.long)
    neg_mask[:, 5:] = 0
    embeds = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g),
                  prompt_embeds_mask=torch.ones(1, 8, dtype=torch.long),
                  negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
                  negative_prompt_embeds_mask=neg_mask)

    def call(steps: int) -> torch.Tensor:
        return pipe(**embeds, height=64, width=64, num_inference_steps=steps, true_cfg_scale=4.0,
                    generator=_gen(3), output_type="latent").images

    return pipe, call


def _cogvideox():
    """5 frames of 64² pixels: 2 latent frames of 8×8 in 2×2 patches, 32 video tokens (the model's sample size);
    CogVideoX-2b's DDIM scheduler settings (v-prediction, zero terminal SNR, trailing spacing)."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       timestep_spacing="trailing", clip_sample=False, snr_shift_scale=3.0)
    pipe = CogVideoXPipeline(transformer=_transformer("CogVideoXTransformer3DModel"), scheduler=scheduler, vae=None,
                             text_encoder=None, tokenizer=None)
    g = _gen(100)
    embeds = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g),
                  negative_prompt_embeds=torch.randn(1, 8, 32, generator=g))

    def call(steps: int) -> torch.Tensor:
        return pipe(**embeds, height=64, width=64, num_frames=5, num_inference_steps=steps, guidance_scale=6.0,
                    generator=_gen(3), output_type="latent").frames

    return pipe, call


def _ltx():
    """9 frames of 128² pixels (no VAE: compression 8 in time, 32 in space): 2 × 4 × 4 = 32 video tokens; padded
    text masks."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline

    pipe = LTXPipeline(transformer=_transformer("LTXVideoTransformer3DModel"),
                       scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None)
    g = _gen(100)
    mask = torch.ones(1, 8, dtype=torch.long)
    mask[:, 6:] = 0
    neg_mask = torch.ones(1, 8, dtype=torch.long)
    neg_mask[:, 3:] = 0
    embeds = dict(prompt_embeds=torch.randn(1, 8, 16, generator=g), prompt_attention_mask=mask,
                  negative_prompt_embeds=torch.randn(1, 8, 16, generator=g),
                  negative_prompt_attention_mask=neg_mask)

    def call(steps: int) -> torch.Tensor:
        return pipe(**embeds, height=128, width=128, num_frames=9, num_inference_steps=steps, guidance_scale=3.0,
                    generator=_gen(3), output_type="latent").frames

    return pipe, call


@dataclass(frozen=True)
class Case:
    build: Callable
    steps: int
    branches: FrozenSet[str]


CASES = {
    "StableDiffusion3Pipeline": Case(_sd3, 8, frozenset({"default"})),
    "QwenImagePipeline": Case(_qwenimage, 6, frozenset({"cond", "uncond"})),
    "CogVideoXPipeline": Case(_cogvideox, 7, frozenset({"cond_uncond"})),
    "LTXPipeline": Case(_ltx, 8, frozenset({"cond_uncond"})),
}


@dataclass
class Built:
    name: str
    pipe: object
    call: Callable[[], torch.Tensor]
    steps: int
    branches: FrozenSet[str]
    ref: torch.Tensor
    call_at: Callable[[int], torch.Tensor]  # the call at another step count


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request):
    case = CASES[request.param]
    pipe, call = case.build()
    assert type(pipe).__name__ == request.param
    pipe.set_progress_bar_config(disable=True)
    ref = call(case.steps)
    assert torch.isfinite(ref).all() and ref.abs().max() > 0
    return Built(request.param, pipe, lambda: call(case.steps), case.steps, case.branches, ref, call)


@contextlib.contextmanager
def _enabled(pipe, **options):
    dicache.enable(pipe, **options)
    try:
        yield
    finally:
        dicache.disable(pipe)


def test_threshold_zero_is_bitwise_the_pipeline(built):
    with _enabled(built.pipe, backend="torch", threshold=0.0):
        out = built.call()
        s = dicache.summary(built.pipe)
    assert torch.equal(out, built.ref)
    # the hooks did run: every call of every branch was decided and computed
    assert set(s.branches) == built.branches
    assert all(b.calls == built.steps and b.pattern == "F" * built.steps for b in s.branches.values())


def test_branches_and_patterns(built):
    with _enabled(built.pipe, **SKIPPING):
        out = built.call()
        s = dicache.summary(built.pipe)
    n = built.steps
    # the final steps forced: the last, and the one before it where the last is negligible (SD3's scheduler ends on
    # σ 0.0089 → 0 at any step count: dicache.config.negligible_final_steps)
    sizes = _step_sizes(built.pipe.scheduler, n)
    last = 1 + (negligible_final_steps(sizes) if sizes is not None else 0)
    assert last == (2 if built.name == "StableDiffusion3Pipeline" else 1)
    assert set(s.branches) == built.branches, str(s)
    for name, b in s.branches.items():
        assert b.calls == n and len(b.pattern) == n, (name, b.pattern)
        assert b.pattern.startswith("FF") and b.pattern.endswith("F" * last), (name, b.pattern)
        # δ huge: every call between the warm-up and the last steps is skipped
        assert b.skipped_calls == n - 2 - last and set(b.pattern[2:-last]) <= set("._"), (name, b.pattern)
        assert b.block_evaluations < b.block_evaluations_uncached
    # the skips changed the output (the reconstruction is not the computed deep output), and it stays finite
    assert torch.isfinite(out).all() and not torch.equal(out, built.ref)


def test_a_second_call_is_a_new_trajectory(built):
    with _enabled(built.pipe, **SKIPPING):
        first = built.call()
        patterns = {k: b.pattern for k, b in dicache.summary(built.pipe).branches.items()}
        second = built.call()
        s = dicache.summary(built.pipe)
    assert not torch.equal(first, built.ref)  # it skipped
    assert torch.equal(second, first)
    # the records start over too: one call per step and branch, the same decisions
    assert {k: b.pattern for k, b in s.branches.items()} == patterns
    assert all(b.calls == built.steps for b in s.branches.values())
    # and disable leaves the pipeline as it was
    assert torch.equal(built.call(), built.ref)


def test_the_default_rebuilds_the_model_output_on_ddpm_family_trajectories_only(built):
    """``reconstruct_at="auto"`` (the presets' rule): where γ comes from the steps a skipped call rebuilds the model's
    output on the trajectory of a DDPM-family scheduler (CogVideoX's DDIM), the deep blocks' output on a flow-matching
    one. ``gamma_source="auto"`` takes γ from the steps from 25 steps on, and at any step count on a DDPM-family
    trajectory: there the runs are planned (no skipped call runs a probe) at 20 steps too; on a flow-matching
    trajectory of 20 steps the probe sets γ."""
    ddpm = built.name == "CogVideoXPipeline"
    with _enabled(built.pipe, backend="torch"):
        for steps in (26, 20):
            built.call_at(steps)
            s = dicache.summary(built.pipe)
            skipped = sum(b.skipped_calls for b in s.branches.values())
            rebuilt = sum(b.outputs_rebuilt for b in s.branches.values())
            planned = all("." not in b.pattern for b in s.branches.values())
            assert skipped >= 8, str(s)
            assert s.config.gamma_source == ("steps" if ddpm and steps < 25 else "auto"), str(s)
            assert planned == (ddpm or steps >= 25), str(s)
            # under 25 steps the header says so (not "on ≥ 25 steps")
            header = "γ from the steps, runs planned (skips unprobed, runs only shortening))" in str(s)
            assert header == (ddpm and steps < 25), str(s)
            # every skip but those with a single stored entry (none here: two computed calls lead)
            assert rebuilt == (skipped if ddpm else 0), str(s)


def test_the_default_of_a_family_without_a_preset_budgets_two_times(built):
    """``dicache.enable(pipe)`` with no options on a family without a preset: the presets' rule with a compute budget
    of 2× from 20 steps on (a δ does not carry over between models); its calls fall by about half. Below 20 steps, on
    the transformer alone (no step count) and with a δ option: the same rule at its δ, no budget."""
    generic, budget = dicache.config.GENERIC, dicache.config.GENERIC_BUDGET
    ddpm, sd3 = built.name == "CogVideoXPipeline", built.name == "StableDiffusion3Pipeline"

    def on(cfg):  # the trajectory's config: a DDPM-family scheduler's takes γ from the steps (gamma_source="auto");
        # SD3's schedule ends on a negligible step (σ 0.0089 → 0), so the step before it is forced too
        return cfg.replace(gamma_source="steps") if ddpm else cfg.replace(force_last_step=2) if sd3 else cfg

    with _enabled(built.pipe, backend="torch"):
        built.call_at(20)
        s = dicache.summary(built.pipe)
        assert s.config == on(budget) and s.enabled_config == (budget if ddpm or sd3 else None)
        assert s.rule == "target_speedup=2"
        assert set(s.branches) == built.branches and all(b.calls == 20 for b in s.branches.values())
        assert 1.8 <= 1.0 / (1.0 - s.saved_fraction) <= 2.2, str(s)
        # the first call predicts its errors from the step sizes of flow sigmas; CogVideoX's DDIM tells none (its
        # first call predicts from its errors' own growth, and plans its runs: γ from the steps)
        budgets = {b.budget for b in s.branches.values()} - {"follows"}
        assert budgets == {"planned, online" if ddpm else "online, step sizes"}, budgets
        second = built.call_at(20)  # the second call of a step count replays the first's error profile
        assert torch.isfinite(second).all()
        assert 1.8 <= 1.0 / (1.0 - dicache.summary(built.pipe).saved_fraction) <= 2.2
        built.call_at(12)  # fewer steps than target_min_steps: the δ rule, which backs off where it must
        s = dicache.summary(built.pipe)
        assert s.config == on(generic) and s.enabled_config == budget and s.rule.startswith("δ=0.2, no budget under 20")
        assert all(b.calls == 12 and b.budget is None for b in s.branches.values())
    with _enabled(built.pipe.transformer, backend="torch"):
        built.call_at(20)  # the pipeline's scheduler is not linked: no step count, no budget
        s = dicache.summary(built.pipe.transformer)
        assert s.enabled_config == budget and s.config == generic and s.saved_fraction > 0
    with _enabled(built.pipe, backend="torch", target_speedup=2.5):  # a budget asked for: at every step count
        built.call_at(12)
        s = dicache.summary(built.pipe)
        asked = budget.replace(target_speedup=2.5, target_min_steps=None)
        assert s.config == on(asked) and s.enabled_config == (asked if ddpm or sd3 else None)
        assert all(b.budget is not None for b in s.branches.values())
    with _enabled(built.pipe, backend="torch", threshold=0.3):
        built.call_at(20)
        assert dicache.summary(built.pipe).config == on(generic.replace(threshold=0.3))
    with _enabled(built.pipe, backend="torch", max_consecutive_reuse=2):
        assert dicache.summary(built.pipe).config.target_speedup is None


@pytest.mark.parametrize("layers", [[0], [2]])
def test_sd3_skip_layer_guidance_runs_its_extra_calls_uncached(layers):
    """Skip-layer guidance adds a call per step with ``skip_layers`` (the block list left out): it runs without the
    cache (``bypass_args``), so at δ = 0 the pipeline is bitwise its own (leaving out block 0, the probe, crashed),
    and with skips only the batched CFG call is cached and recorded."""
    pipe, _ = _sd3()
    pipe.set_progress_bar_config(disable=True)
    g = _gen(100)
    embeds = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g),
                  negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
                  pooled_prompt_embeds=torch.randn(1, 16, generator=g),
                  negative_pooled_prompt_embeds=torch.randn(1, 16, generator=g))

    def call():
        return pipe(**embeds, height=64, width=64, num_inference_steps=8, guidance_scale=4.0, generator=_gen(3),
                    output_type="latent", skip_guidance_layers=layers, skip_layer_guidance_start=0.0,
                    skip_layer_guidance_stop=1.0).images

    ref = call()
    with _enabled(pipe, backend="torch", threshold=0.0):
        assert torch.equal(call(), ref)
    with _enabled(pipe, **SKIPPING):
        out = call()
        s = dicache.summary(pipe)
    # the last two forced: SD3's schedule ends on a negligible step, σ 0.0089 → 0
    assert set(s.branches) == {"default"} and s.branches["default"].pattern == "FF" + "." * 4 + "FF"
    assert torch.isfinite(out).all() and not torch.equal(out, ref)


def test_cogvideox_video_to_video_runs_the_end_of_the_schedule():
    """CogVideoXVideoToVideoPipeline with ``strength`` < 1 runs the end of the DDIM schedule, whose scheduler keeps
    no step index and sets no begin index: the first call's timestep places the trajectory (6 of 10 steps, the
    last forced). It counted the whole schedule and skipped the last step."""
    import numpy as np
    from PIL import Image

    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXVideoToVideoPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                 temporal_compression_ratio=4).eval()
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       timestep_spacing="trailing", clip_sample=False, snr_shift_scale=3.0)
    pipe = CogVideoXVideoToVideoPipeline(transformer=_transformer("CogVideoXTransformer3DModel"), scheduler=scheduler,
                                         vae=vae, text_encoder=None, tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    video = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(5)]
    with _enabled(pipe, **SKIPPING):
        pipe(prompt_embeds=torch.randn(1, 8, 32, generator=_gen(100)),
             negative_prompt_embeds=torch.randn(1, 8, 32, generator=_gen(101)), video=video, strength=0.6, height=64,
             width=64, num_inference_steps=10, guidance_scale=6.0, generator=_gen(3), output_type="latent")
        branch = dicache.summary(pipe).branches["cond_uncond"]
    assert branch.pattern == "FF...F" and branch.steps[-1].reason == "last_step"  # warm-up of 2
    # the default there (no preset: a budget of 2×) counts the calls the pipeline runs, 24 of 40 steps
    with _enabled(pipe, backend="torch"):
        pipe(prompt_embeds=torch.randn(1, 8, 32, generator=_gen(100)),
             negative_prompt_embeds=torch.randn(1, 8, 32, generator=_gen(101)), video=video, strength=0.6, height=64,
             width=64, num_inference_steps=40, guidance_scale=6.0, generator=_gen(3), output_type="latent")
        branch = dicache.summary(pipe).branches["cond_uncond"]
    # DDIM: no step sizes; γ from the steps on its trajectory, so the runs are planned
    assert branch.calls == 24 and branch.steps[-1].computed and branch.budget == "planned, online"
    assert 1.8 <= 1.0 / (1.0 - branch.saved_fraction) <= 2.2, branch.pattern


def test_skyreels_diffusion_forcing_steps_copies_of_its_scheduler():
    """SkyReelsV2DiffusionForcingPipeline steps deep copies of its scheduler, so the linked one never moves: its
    step index is no clock, and the calls are numbered by their count as before (the presets still skip; at δ = 0
    the pipeline is bitwise its own). With ``ar_step`` > 0 its loop runs more calls than the scheduler's timesteps
    (the frames lag each other) and says so in ``_num_timesteps``: the trajectory is that long, so only its own last
    call is forced (before, every call past the scheduler's count was)."""
    from diffusers import AutoencoderKLWan, SkyReelsV2DiffusionForcingPipeline, UniPCMultistepScheduler

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=_transformer("SkyReelsV2Transformer3DModel"),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    g = _gen(100)
    embeds = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), negative_prompt_embeds=torch.randn(1, 8, 32, generator=g))

    def call():
        return pipe(prompt=None, **embeds, height=16, width=16, num_frames=9, num_inference_steps=10, guidance_scale=5.0,
                    generator=_gen(3), output_type="latent", ar_step=2, causal_block_size=1).frames

    ref = call()
    with _enabled(pipe, backend="torch", threshold=0.0):
        assert torch.equal(call(), ref)
    with _enabled(pipe, backend="torch"):
        call()
        branch = dicache.summary(pipe).branches["cond"]
        assert dicache.hooks.session_of(pipe.transformer).pipeline_steps == pipe._num_timesteps == branch.calls > 10
    assert [st.index for st in branch.steps] == list(range(branch.calls)) and branch.skipped_calls >= 3
    # force_last_step=0.04: the last call of the loop only; the calls past the scheduler's 10 timesteps skip too
    assert [st.index for st in branch.steps if st.reason == "last_step"] == [branch.calls - 1], branch.pattern
    assert any(not st.computed for st in branch.steps[10:]), branch.pattern
