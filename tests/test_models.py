"""DiCache on tiny Flux, Wan and HunyuanVideo models: exactness, restore, branches, repeatability."""

import math

import pytest
import torch

import dicache
from dicache.hooks import SESSION_ATTR

import tiny

LOOPS = {
    "flux": (tiny.flux_transformer, tiny.flux_loop),
    "wan": (tiny.wan_transformer, tiny.wan_loop),
    "hunyuan_video": (tiny.hunyuan_transformer, tiny.hunyuan_loop),
}
PIPELINES = {
    "flux": (tiny.flux_pipeline, tiny.flux_pipeline_call),
    "wan": (tiny.wan_pipeline, tiny.wan_pipeline_call),
    "hunyuan_video": (tiny.hunyuan_pipeline, tiny.hunyuan_pipeline_call),
}


def _module_state(model):
    """Everything an enable could leave behind: instance attributes of every submodule, and buffers."""
    return {
        name: (sorted(vars(m).keys()), sorted(n for n, _ in m.named_buffers(recurse=False)))
        for name, m in model.named_modules()
    }


@pytest.mark.parametrize("family", sorted(LOOPS))
def test_threshold_zero_is_exact_bare_loop(family):
    make, loop = LOOPS[family]
    model = make()
    expected = loop(model)
    dicache.enable(model, backend="torch", threshold=0.0)
    got = loop(model)
    s = dicache.summary(model)
    dicache.disable(model)
    assert torch.equal(got, expected)
    assert s.skipped_calls == 0 and s.full_calls == 8


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_threshold_zero_is_exact_pipeline(family):
    make, call = PIPELINES[family]
    pipe = make()
    expected = call(pipe)
    dicache.enable(pipe, backend="torch", threshold=0.0)
    got = call(pipe)
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    assert torch.equal(got, expected)
    assert s.skipped_calls == 0 and s.full_calls > 0


@pytest.mark.parametrize("family", sorted(LOOPS))
def test_disable_restores_model_bitwise(family):
    make, loop = LOOPS[family]
    never = make()
    model = make()
    before = _module_state(model)
    dicache.enable(model, backend="torch", threshold=10.0, warmup=1)
    cached = loop(model)
    assert dicache.summary(model).skipped_calls > 0
    dicache.disable(model)
    assert _module_state(model) == before
    assert SESSION_ATTR not in vars(model)
    out = loop(model)
    assert torch.equal(out, loop(never))
    assert not torch.equal(out, cached)  # the cache really changed something before
    with pytest.raises(dicache.NotEnabledError):
        dicache.summary(model)


def test_disable_restores_pipeline():
    pipe = tiny.flux_pipeline()
    never = tiny.flux_pipeline()
    tiny.flux_pipeline_call(pipe)  # a call sets scheduler attributes of its own
    scheduler_attrs = sorted(vars(pipe.scheduler))
    pipe_attrs = sorted(vars(pipe))
    dicache.enable(pipe, backend="torch", threshold=10.0)
    tiny.flux_pipeline_call(pipe)
    dicache.disable(pipe)
    assert sorted(vars(pipe.scheduler)) == scheduler_attrs
    assert sorted(vars(pipe)) == pipe_attrs
    assert torch.equal(tiny.flux_pipeline_call(pipe), tiny.flux_pipeline_call(never))


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_same_seed_twice_then_other_step_count(family):
    make, call = PIPELINES[family]
    pipe = make()
    dicache.enable(pipe, backend="torch", threshold=2.0)
    first = call(pipe, steps=6)
    s1 = dicache.summary(pipe)
    second = call(pipe, steps=6)
    s2 = dicache.summary(pipe)
    assert torch.equal(first, second)
    assert [b.pattern for b in s1.branches.values()] == [b.pattern for b in s2.branches.values()]
    assert s1.skipped_calls > 0
    third = call(pipe, steps=9)
    s3 = dicache.summary(pipe)
    assert torch.isfinite(third).all()
    assert all(b.calls == 9 for b in s3.branches.values())
    dicache.disable(pipe)


def test_bare_loop_repeats_without_reset():
    """A bare transformer sees a new trajectory when the timestep goes up: same input, same output."""
    model = tiny.flux_transformer()
    dicache.enable(model, backend="torch", threshold=2.0, warmup=1)
    a = tiny.flux_loop(model)
    b = tiny.flux_loop(model)
    assert torch.equal(a, b)
    assert dicache.summary(model).branches["default"].calls == 8
    dicache.disable(model)


def _rising_loop(model, steps: int = 8, context: bool = False, cfg: bool = False):
    """A bare loop whose timesteps rise, as Lumina2's and Z-Image's pipelines pass them (t = 1 − σ); with ``cfg``,
    two calls a step at the same timestep; with ``context``, named branches without a step index."""
    inputs = tiny.flux_inputs()
    x = inputs.pop("hidden_states")
    with torch.no_grad():
        for i in range(steps):
            t = torch.tensor([(i + 0.5) / steps])
            for name in (("cond", "uncond") if cfg else ("cond",)):
                kwargs = dict(inputs, hidden_states=x, timestep=t, return_dict=False)
                if context:
                    with model.cache_context(name):
                        v = model(**kwargs)[0]
                else:
                    v = model(**kwargs)[0]
            x = x - v / steps
    return x


@pytest.mark.parametrize("context", [False, True])
def test_bare_loop_with_rising_timesteps_is_one_trajectory(context):
    """Rising timesteps once started a new trajectory at every call (nothing ever skipped); the second timestep of
    a trajectory now sets the direction, and a timestep against it starts the next trajectory."""
    model = tiny.flux_transformer()
    dicache.enable(model, backend="torch", threshold=2.0, warmup=1, num_inference_steps=8)
    a = _rising_loop(model, context=context)
    b = _rising_loop(model, context=context)  # its first timestep is below the last: a new trajectory
    branch = dicache.summary(model).branches["cond" if context else "default"]
    dicache.disable(model)
    assert torch.equal(a, b)
    assert branch.calls == 8 and branch.pattern.startswith("F") and "." in branch.pattern


def test_bare_loop_with_rising_timesteps_and_cfg_keeps_two_branches():
    model = tiny.flux_transformer()
    dicache.enable(model, backend="torch", threshold=2.0, warmup=1, num_inference_steps=8)
    _rising_loop(model, cfg=True)
    s = dicache.summary(model)
    dicache.disable(model)
    assert set(s.branches) == {"default", "default1"}
    assert all(b.calls == 8 and b.skipped_calls > 0 for b in s.branches.values())  # default1 follows default


def test_wan_pipeline_cfg_branches_keep_separate_state():
    """Scaled negative embeddings make the uncond branch move differently: its decisions differ."""
    pipe = tiny.wan_pipeline()
    dicache.enable(pipe, backend="torch", config=dicache.PAPER_PRESETS["wan"], threshold=0.25, warmup=1)  # each branch decides alone
    tiny.wan_pipeline_call(pipe, steps=8, negative_scale=20.0)
    s = dicache.summary(pipe)
    engine = dicache.hooks.session_of(pipe.transformer).engine
    dicache.disable(pipe)
    cond, uncond = s.branches["cond"], s.branches["uncond"]
    assert cond.calls == uncond.calls == 8
    assert cond.pattern != uncond.pattern
    # each branch's decisions follow its own accumulated error
    for b in (cond, uncond):
        for step in b.steps:
            if step.reason == "refresh":
                assert step.error >= 0.25
            elif not step.computed:
                assert step.error < 0.25
    assert engine.branches["cond"] is not engine.branches["uncond"]


def test_bare_loop_cfg_without_context_gets_two_branches():
    model = tiny.wan_transformer()
    dicache.enable(model, backend="torch", threshold=0.0)
    expected_model = tiny.wan_transformer()
    got = tiny.wan_loop(model, cfg=4.0, uncond_scale=0.0)
    s = dicache.summary(model)
    dicache.disable(model)
    assert set(s.branches) == {"default", "default1"}
    assert torch.equal(got, tiny.wan_loop(expected_model, cfg=4.0, uncond_scale=0.0))


def test_context_with_step_index_uses_it():
    model = tiny.flux_transformer()
    dicache.enable(model, backend="torch", config=dicache.PAPER_PRESETS["flux"], threshold=10.0, warmup=0.5)  # no cap on reuses
    tiny.flux_loop(model, steps=8, context=True)
    b = dicache.summary(model).branches["cond"]
    dicache.disable(model)
    assert [s.reason for s in b.steps[:4]] == ["warmup"] * 4  # ceil(0.5 * 8) from num_inference_steps
    assert b.steps[-1].reason == "last_step"
    assert b.pattern == "FFFF...F"


@pytest.mark.parametrize("cfg", [False, True])
def test_context_loop_twice_is_the_same(cfg):
    """A hand-written loop in ``cache_context(name, step_index=i)`` run twice: the second run starts afresh. The
    leads of a shared CFG decision (the presets) are kept per step; a branch's restart at step 0 left the last
    trajectory's leads behind, and the second run followed them (its call 5 skipped without a probe)."""
    model = tiny.flux_transformer()
    dicache.enable(model, backend="torch", threshold=0.3, warmup=1)
    runs = []
    for _ in range(2):
        inputs = tiny.flux_inputs()
        x = inputs.pop("hidden_states")
        with torch.no_grad():
            for i, s in enumerate(torch.linspace(1.0, 0.125, 8)):
                vs = []
                for name in (("cond", "uncond") if cfg else ("cond",)):
                    with model.cache_context(name, step_index=i, num_inference_steps=8):
                        vs.append(model(**dict(inputs, hidden_states=x, timestep=s.expand(1)), return_dict=False)[0])
                x = x - vs[0] / 8
        runs.append((x, {k: b.pattern for k, b in dicache.summary(model).branches.items()}))
    dicache.disable(model)
    assert runs[0][1] == runs[1][1] and "." in runs[0][1]["cond"]
    assert torch.equal(runs[0][0], runs[1][0])


@pytest.mark.parametrize("compile_first", [False, True])
def test_a_compiled_transformer_gives_the_eager_result(compile_first):
    """``torch.compile`` on the transformer, before or after ``enable`` (dynamo's eager backend: its tracing, graph
    breaks and replayed side effects on the hooks' state, without inductor's compile time): the same decisions and
    outputs as eager; ``enable``, ``summary``, ``reset`` and ``disable`` take the compiled module too."""
    def run(model):
        dicache.reset(model)
        out = tiny.flux_loop(model, steps=8, context=True)
        return out, dicache.summary(model).branches["cond"].pattern

    options = dict(backend="torch", threshold=0.3, warmup=1)
    model = tiny.flux_transformer()
    dicache.enable(model, **options)
    eager, pattern = run(model)
    dicache.disable(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    if compile_first:
        dicache.enable(compiled, **options)
    else:
        dicache.enable(model, **options)
    out, compiled_pattern = run(compiled)
    dicache.disable(compiled)
    assert compiled_pattern == pattern and "." in pattern and "_" in pattern
    assert torch.allclose(out, eager, rtol=1e-5, atol=1e-5)
    assert dicache.hooks.session_of(model) is None


def test_batch_policies_run_and_differ_in_gamma_shape():
    model = tiny.flux_transformer()
    outs = {}
    for policy in ("global", "max"):
        dicache.enable(model, backend="torch", config=dicache.PAPER_PRESETS["flux"], threshold=10.0, warmup=2, batch_policy=policy)
        outs[policy] = tiny.flux_loop(model, batch=3)
        assert dicache.summary(model).skipped_calls == 6
        dicache.disable(model)
    assert torch.isfinite(outs["max"]).all()
    assert not torch.equal(outs["global"], outs["max"])


def test_probe_minus_input_error_mode():
    model = tiny.flux_transformer()
    dicache.enable(model, backend="torch", threshold=0.05, warmup=1, error="probe_minus_input")
    out = tiny.flux_loop(model)
    s = dicache.summary(model)
    dicache.disable(model)
    assert torch.isfinite(out).all()
    errors = [c.error for c in s.branches["default"].steps if c.error is not None]
    assert errors and all(e >= 0 for e in errors)


def test_deeper_probe_spanning_block_lists():
    """Flux tiny has 2 double + 3 single blocks; a probe of 3 crosses into the single blocks."""
    model = tiny.flux_transformer()
    expected = tiny.flux_loop(model)
    dicache.enable(model, backend="torch", threshold=0.0, probe_depth=3)
    assert torch.equal(tiny.flux_loop(model), expected)
    dicache.disable(model)
    dicache.enable(model, backend="torch", threshold=10.0, probe_depth=3, warmup=1)
    tiny.flux_loop(model)
    s = dicache.summary(model)
    dicache.disable(model)
    b = s.branches["default"]
    assert b.block_evaluations == b.full_calls * 5 + b.skipped_calls * 3


def test_reset_clears_state():
    model = tiny.flux_transformer()
    dicache.enable(model, backend="torch", threshold=10.0)
    tiny.flux_loop(model, steps=4)
    assert dicache.summary(model).calls == 4
    dicache.reset(model)
    assert dicache.summary(model).calls == 0
    dicache.disable(model)


def test_a_second_pipeline_on_the_same_transformer_links_its_scheduler():
    """A pipeline built on an enabled pipeline's transformer with a scheduler of its own: its calls ran on as one
    trajectory with the first pipeline's (18 calls for three calls of 6 steps, the later ones all computed) until
    ``dicache.enable(second)`` links its scheduler; ``from_pipe`` shares the scheduler and needs nothing."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    pipe = tiny.flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    dicache.enable(pipe, backend="torch", threshold=0.3, warmup=1)
    first = tiny.flux_pipeline_call(pipe)
    pattern = dicache.summary(pipe).branches["cond"].pattern
    assert "." in pattern or "_" in pattern
    with pytest.raises(dicache.AlreadyEnabledError, match="already enabled on this FluxPipeline"):
        dicache.enable(pipe)

    shared = FluxPipeline.from_pipe(pipe)
    dicache.enable(shared)  # nothing to do: the scheduler is the first pipeline's
    other = FluxPipeline(**dict(pipe.components, scheduler=FlowMatchEulerDiscreteScheduler()))
    other.set_progress_bar_config(disable=True)
    with pytest.raises(dicache.AlreadyEnabledError, match="without settings"):
        dicache.enable(other, threshold=0.5)
    dicache.enable(other)
    for p in (shared, other, other):
        assert torch.equal(tiny.flux_pipeline_call(p), first)
        branch = dicache.summary(p).branches["cond"]
        assert branch.calls == 6 and branch.pattern == pattern

    dicache.disable(other)  # the transformer's hooks and both schedulers' links
    assert not dicache.is_enabled(pipe)
    assert "set_timesteps" not in vars(pipe.scheduler) and "set_timesteps" not in vars(other.scheduler)


def test_a_scheduler_swapped_in_after_enable_is_followed():
    """``pipe.scheduler = …from_config(…)`` after ``enable``: the new scheduler's calls ran on as one trajectory (18
    calls for three pipeline calls of 6 steps, uncached after the first); the link now moves to it at the next
    transformer call, and the old scheduler is left as it was."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = tiny.flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    dicache.enable(pipe, backend="torch", threshold=0.3, warmup=1)
    first = tiny.flux_pipeline_call(pipe)
    pattern = dicache.summary(pipe).branches["cond"].pattern
    old = pipe.scheduler
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(old.config)
    for _ in range(2):
        assert torch.equal(tiny.flux_pipeline_call(pipe), first)
        branch = dicache.summary(pipe).branches["cond"]
        assert branch.calls == 6 and branch.pattern == pattern
    assert "set_timesteps" not in vars(old)
    dicache.disable(pipe)
    assert "set_timesteps" not in vars(pipe.scheduler)


def test_wan22_two_experts_each_keep_their_own_cache():
    """Wan 2.2's pipeline runs ``transformer`` on the high-noise steps and ``transformer_2`` on the rest, both in
    ``cache_context(…, step_index=i)``: one cache per expert, each computing its first call (nothing stored yet),
    the pipeline's step indices kept, the final steps forced on the second; at δ = 0 the pipeline is bitwise its
    own."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=tiny.wan_transformer(0),
                       transformer_2=tiny.wan_transformer(1), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                       boundary_ratio=0.5)
    pipe.set_progress_bar_config(disable=True)
    ref = tiny.wan_pipeline_call(pipe, steps=12)
    dicache.enable(pipe, backend="torch", threshold=0.0)
    assert torch.equal(tiny.wan_pipeline_call(pipe, steps=12), ref)
    dicache.disable(pipe)
    dicache.enable(pipe, backend="torch", threshold=1e9, warmup=1, force_last_step=1, cfg_decision="separate")
    tiny.wan_pipeline_call(pipe, steps=12)
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    assert set(s.branches) == {"cond", "uncond", "1:cond", "1:uncond"}
    high, low = s.branches["cond"], s.branches["1:cond"]
    assert high.calls + low.calls == 12 and high.calls > 0 and low.calls > 0
    assert [st.index for st in low.steps] == list(range(high.calls, 12))  # the pipeline's own step indices
    # the scheduler (shift 3, as SD3's) ends on σ 0.0089 → 0: the step before that negligible one is forced too
    assert high.pattern.startswith("F.") and low.pattern == "F" + "." * (low.calls - 3) + "FF"
    assert low.steps[0].reason == "warmup" and [st.reason for st in low.steps[-2:]] == ["last_step"] * 2


def test_a_pipeline_with_only_its_second_expert_is_enabled():
    """Wan 2.2's pipeline may leave ``transformer`` out and run ``transformer_2`` alone."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=None,
                       transformer_2=tiny.wan_transformer(1), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                       boundary_ratio=1.5)  # every timestep below the boundary: transformer_2 runs them all
    pipe.set_progress_bar_config(disable=True)
    dicache.enable(pipe, backend="torch", threshold=1e9, warmup=1, force_last_step=1)
    tiny.wan_pipeline_call(pipe, steps=6)
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    assert s.model == "WanTransformer3DModel" and s.branches["cond"].calls == 6 and s.skipped_calls > 0


def test_img2img_trajectories_begin_where_the_scheduler_does():
    """``strength`` < 1 (img2img, inpaint) runs the last part of the schedule, from ``set_begin_index`` on: the
    trajectory's count and step sizes are that part's. It was read as the whole schedule, so the final steps of
    an img2img call were never forced (``F.....`` with the last step skipped)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline

    base = tiny.flux_pipeline()
    base.vae.register_to_config(shift_factor=0.0, scaling_factor=1.0)
    pipe = FluxImg2ImgPipeline(**base.components)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(100)
    kwargs = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 16, generator=g),
                  image=torch.rand(1, 3, 16, 16, generator=g), strength=0.5, height=16, width=16,
                  num_inference_steps=12, guidance_scale=3.5, output_type="latent")
    dicache.enable(pipe, backend="torch", threshold=1e9, warmup=1, force_last_step=1)
    pipe(**kwargs, generator=torch.Generator().manual_seed(3))
    branch = dicache.summary(pipe).branches["default"]  # the img2img pipeline calls no cache_context
    sizes = dicache.hooks.session_of(pipe.transformer).engine._budget.step_sizes
    dicache.disable(pipe)
    assert branch.calls == 6 and branch.pattern == "F....F" and branch.steps[-1].reason == "last_step"
    full = dicache.api._step_sizes(pipe.scheduler, len(pipe.scheduler.timesteps))
    assert sizes == full[6:] and len(sizes) == 6
    assert not any(name in vars(pipe.scheduler) for name in ("set_timesteps", "set_begin_index"))


def _tiny_wan_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.0] * 4,
                            latents_std=[1.0] * 4).eval()


def _last_computed(branch):
    return branch.steps[-1].computed and branch.steps[-1].reason == "last_step"


def test_wan22_image_to_video_numbers_its_experts_by_the_scheduler():
    """WanImageToVideoPipeline passes no step index to ``cache_context``: each expert counted its calls from 0, so
    the second expert's last call (the last step of the generation) was never forced. The scheduler's step index
    numbers them now."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel

    def expert(seed):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**dict(tiny.WAN_CONFIG, in_channels=12)).eval()

    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=_tiny_wan_vae(), transformer=expert(0),
                                   transformer_2=expert(1), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                   boundary_ratio=0.5)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(100)
    kwargs = dict(image=torch.rand(1, 3, 32, 32, generator=g), prompt_embeds=torch.randn(1, 8, 32, generator=g),
                  height=32, width=32, num_frames=5, num_inference_steps=8, guidance_scale=1.0, output_type="latent")
    dicache.enable(pipe, backend="torch", threshold=1e9, warmup=1, force_last_step=1)
    pipe(**kwargs, generator=torch.Generator().manual_seed(3))
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    high, low = s.branches["cond"], s.branches["1:cond"]
    assert [st.index for st in high.steps + low.steps] == list(range(8))
    assert _last_computed(low) and not high.steps[-1].computed


def test_video_to_video_with_strength_runs_the_end_of_the_schedule():
    """WanVideoToVideoPipeline with ``strength`` < 1 runs the end of the schedule without ``set_begin_index``: the
    trajectory's count is learnt from the scheduler's step index at the second step (6 of 10, the last two forced)."""
    import numpy as np
    from PIL import Image

    from diffusers import FlowMatchEulerDiscreteScheduler, WanVideoToVideoPipeline

    pipe = WanVideoToVideoPipeline(tokenizer=None, text_encoder=None, vae=_tiny_wan_vae(),
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                   transformer=tiny.wan_transformer(0))
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    video = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    kwargs = dict(video=video, prompt_embeds=torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(100)),
                  height=32, width=32, num_inference_steps=10, strength=0.6, guidance_scale=1.0, output_type="latent")
    dicache.enable(pipe, backend="torch", threshold=1e9, warmup=1, force_last_step=1)
    pipe(**kwargs, generator=torch.Generator().manual_seed(3))
    branch = dicache.summary(pipe).branches["default"]  # no cache_context in this pipeline
    sizes = dicache.hooks.session_of(pipe.transformer).engine._budget.step_sizes
    dicache.disable(pipe)
    # the last two forced: the schedule (shift 3, as SD3's) ends on a negligible step, σ 0.0089 → 0
    assert branch.pattern == "F...FF" and _last_computed(branch)
    assert sizes == dicache.api._step_sizes(pipe.scheduler, 10)[4:]


def test_a_second_order_scheduler_is_one_branch_of_all_its_calls():
    """FlowMatchHeunDiscreteScheduler calls the transformer twice per step at the same timestep; in a pipeline
    without ``cache_context`` (SD3) the repeated timesteps were read as a second CFG branch, and neither branch
    reached the last call. The scheduler's step index tells the calls apart: one branch, the last call forced."""
    from diffusers import FlowMatchHeunDiscreteScheduler, StableDiffusion3Pipeline

    import tiny_families

    pipe = StableDiffusion3Pipeline(transformer=tiny_families.CASES["SD3Transformer2DModel"][0](),
                                    scheduler=FlowMatchHeunDiscreteScheduler(shift=3.0), vae=None, text_encoder=None,
                                    tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                    tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(100)
    kwargs = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 16, generator=g),
                  height=64, width=64, num_inference_steps=6, guidance_scale=1.0, output_type="latent")
    dicache.enable(pipe, backend="torch", threshold=1e9, warmup=1, force_last_step=1)
    pipe(**kwargs, generator=torch.Generator().manual_seed(3))
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    assert set(s.branches) == {"default"}
    branch = s.branches["default"]
    assert branch.calls == 11 and branch.pattern == "F" + "." * 9 + "F" and _last_computed(branch)


def _outputs_of(model, order, reconstruct_at, output_module="proj_out", warmup=3, threshold=0.5):
    """A context loop of 10 steps on the tiny Flux model with skips after the warm-up calls (γ from the steps), and
    the model's output module's output at every call: (pattern, outputs)."""
    from dicache import adapters

    seen = []
    handle = model.proj_out.register_forward_hook(lambda mod, args, out: seen.append(out.detach().clone()))
    # a subclass of the model's class, with the Flux adapter naming another output module
    base = type(model)
    model.__class__ = type("FluxOut_" + str(output_module), (base,), {})
    adapters.register(type(model), adapters.Adapter(family="flux", block_lists=adapters.FLUX.block_lists,
                                                    output_module=output_module))
    try:
        dicache.enable(model, backend="torch", threshold=threshold, warmup=warmup, gamma_source="steps",
                       alignment_order=order, reconstruct_at=reconstruct_at, plan_runs=False, run_power=0.0,
                       quad_balance=None, force_last_step=1)
        tiny.flux_loop(model, steps=10, context=True)
        summary = dicache.summary(model)
        dicache.disable(model)
    finally:
        handle.remove()
        adapters._REGISTRY.pop(type(model))
        model.__class__ = base
    pattern, rebuilt = summary.branches["cond"].pattern, summary.branches["cond"].outputs_rebuilt
    # every skip after two computed calls rebuilds the output where an output module is hooked, none elsewhere
    hooked = reconstruct_at == "output" and output_module == "proj_out"
    two = sum(1 for k, c in enumerate(pattern) if c != "F" and pattern[:k].count("F") >= 2)
    assert rebuilt == (two if hooked else 0)
    assert ("outputs rebuilt" in str(summary)) == (rebuilt > 0)
    return pattern, seen


@pytest.mark.parametrize("order", [1, 2])
def test_reconstruct_at_output_extrapolates_the_model_outputs(order):
    """``reconstruct_at="output"``: a skipped call's output is the line (or quadratic) through the output module's
    outputs at the newest computed calls, at the call's step; the decisions are those of ``"blocks"``, whose
    outputs differ (the output norm and projection run on the rebuilt blocks' output there)."""
    model = tiny.flux_transformer()
    pattern, out = _outputs_of(model, order, "output")
    blocks_pattern, out_blocks = _outputs_of(model, order, "blocks")
    assert pattern == blocks_pattern and pattern.count("F") <= 7 and pattern[:3] == "FFF"
    first_skip = min(k for k, c in enumerate(pattern) if c != "F")
    computed = []
    for k, c in enumerate(pattern):
        if c == "F":
            computed.append(k)
            if k < first_skip:  # the same calls until the first skip
                assert torch.equal(out[k], out_blocks[k])
            continue
        t = computed[-(order + 1):]
        # the Lagrange weights of the stored calls at step k
        w = [math.prod((k - t[j]) / (t[i] - t[j]) for j in range(len(t)) if j != i) for i in range(len(t))]
        expected = sum(wi * out[ti] for wi, ti in zip(w, t))
        torch.testing.assert_close(out[k], expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out_blocks[k], expected, rtol=1e-3, atol=1e-4)


def test_reconstruct_at_output_without_an_output_module_rebuilds_the_blocks():
    """An adapter that names no output module (Z-Image's final layer is picked per call), or one the model lacks: the
    blocks' output is rebuilt, exactly as with ``reconstruct_at="blocks"``; which trajectories ``"auto"`` rebuilds the
    output on."""
    model = tiny.flux_transformer()
    p1, none = _outputs_of(model, 1, "output", output_module=None)
    p2, blocks = _outputs_of(model, 1, "blocks")
    assert p1 == p2 and all(torch.equal(a, b) for a, b in zip(none, blocks))
    p3, missing = _outputs_of(model, 1, "output", output_module="no_such_module")
    assert p3 == p2 and all(torch.equal(a, b) for a, b in zip(missing, blocks))
    cfg = dicache.DiCacheConfig(reconstruct_at="auto", gamma_source="auto")
    # "auto": the output where γ comes from the steps on a DDPM-family trajectory (flow_matching False) only, which
    # takes γ from the steps at any known step count (gamma_source="auto")
    assert cfg.reconstructs_output(50, False) and cfg.reconstructs_output(20, False)
    assert not cfg.reconstructs_output(None, False) and not cfg.reconstructs_output(20, True)
    assert not cfg.reconstructs_output(50, True) and not cfg.reconstructs_output(50) and not cfg.reconstructs_output(None)
    assert not cfg.replace(gamma_source="probe").reconstructs_output(50, False)
    assert dicache.DiCacheConfig().reconstruct_at == "blocks"
    assert all(p.reconstruct_at == "auto" for p in dicache.PRESETS.values())
    # a skip with a single stored entry rebuilds the blocks' output (no line through one output)
    p4, one = _outputs_of(model, 1, "output", warmup=1, threshold=0.12)
    p5, one_blocks = _outputs_of(model, 1, "blocks", warmup=1, threshold=0.12)
    assert p4 == p5 and p4[:2] == "F." and torch.equal(one[1], one_blocks[1]), p4
    assert any(not torch.equal(a, b) for a, b in zip(one, one_blocks)), p4  # the later skips rebuild the output


def test_reconstruct_at_output_raises_when_the_model_skips_its_output_module():
    """A skipped call whose output is to be rebuilt hands the blocks' input on unrebuilt: if the model then does not
    run the hooked output module (here: swapped for a copy after enable), the call raises rather than return the
    last layers' result on it."""
    model = tiny.flux_transformer()
    dicache.enable(model, backend="torch", threshold=10.0, warmup=3, gamma_source="steps", reconstruct_at="output",
                   num_inference_steps=10)
    inputs = tiny.flux_inputs()
    x = inputs.pop("hidden_states")
    with torch.no_grad():
        for i in range(3):  # the warm-up: computed, their outputs stored
            model(**dict(inputs, hidden_states=x, timestep=torch.tensor([1.0 - i / 10])), return_dict=False)
        hooked = model.proj_out
        fresh = torch.nn.Linear(hooked.in_features, hooked.out_features)
        fresh.load_state_dict(hooked.state_dict())
        model.proj_out = fresh
        with pytest.raises(RuntimeError, match="did not run it"):
            model(**dict(inputs, hidden_states=x, timestep=torch.tensor([0.7])), return_dict=False)
        model.proj_out = hooked
    dicache.disable(model)
