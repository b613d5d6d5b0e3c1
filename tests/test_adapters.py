"""Every built-in adapter on a tiny random model of its class: the hooks hand the streams on as the model expects.

For each model class with an adapter (``dicache.adapters.supported()``): with δ = 0 the hooked model's output is
bitwise the unhooked one's; of three identical calls in one ``cache_context`` the third is skipped, and since the
stored residuals are then equal, its reconstruction must reproduce the computed output. That fails when the code a
model runs after its blocks reads anything the skipped blocks would have changed besides the image stream, or when
an adapter names the wrong argument or return order. Last, ``disable`` restores the model bitwise.
"""

from __future__ import annotations

import pytest
import torch

import dicache
from dicache import adapters
from dicache.adapters.base import Adapter
from dicache.engine import DiCacheEngine

import tiny
import tiny_families


def _forward(model, kwargs):
    with torch.no_grad():
        out = model(**kwargs, return_dict=False)[0]
    return torch.stack(out) if isinstance(out, (list, tuple)) else out  # Z-Image returns a list per sample


CASES = {**tiny.ADAPTER_CASES, **tiny_families.CASES}


def test_every_built_in_adapter_has_a_case():
    import diffusers

    built_in = [name for name in adapters.supported() if hasattr(diffusers, name)]  # not the tests' own toys
    assert sorted(CASES) == built_in and len(built_in) == 20


def _skipped_repeat(model, kwargs, **options):
    """Three identical calls in one ``cache_context``, the third skipped: (its output, the pattern)."""
    options = {**dict(threshold=1e9, warmup=2, force_last_step=False, gamma_source="probe", plan_runs=False,
                      alignment_order=1, predictive_skip=False, cfg_decision="separate"), **options}
    dicache.enable(model, backend="torch", **options)
    outs = []
    try:
        for i in range(3):
            with model.cache_context("cond", step_index=i, num_inference_steps=4):
                outs.append(_forward(model, kwargs))
        pattern = dicache.summary(model).branches["cond"].pattern
    finally:
        dicache.disable(model)
    return outs[2], pattern


class _TailDropped(DiCacheEngine):
    """Skips as DiCache does, but returns the probe's output instead of the reconstruction."""

    def after_probe(self, x, p):
        h = super().after_probe(x, p)
        return None if h is None else p.clone()


def _close(out, ref):
    return torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_adapter_hands_the_streams_on(name, batch):
    make_model, make_kwargs = CASES[name]
    model = make_model()
    assert name in [c.__name__ for c in type(model).__mro__] and adapters.find(model) is not None
    kwargs = make_kwargs(batch)
    ref = _forward(model, kwargs)
    assert torch.isfinite(ref).all() and ref.abs().max() > 0

    dicache.enable(model, backend="torch", threshold=0.0)
    computed = [_forward(model, kwargs) for _ in range(2)]
    dicache.disable(model)
    assert all(torch.equal(out, ref) for out in computed)

    # δ huge, two warm-up calls, the probe's γ on the line: the third identical call is skipped
    out, pattern = _skipped_repeat(model, kwargs)
    assert pattern == "FF." and _close(out, ref)
    # and the check can see a wrong stream: with the probe's output in place of the reconstruction (the skipped
    # blocks' work lost) the output is far from the computed one
    dropped, _ = _skipped_repeat(model, kwargs, engine_factory=_TailDropped)
    assert (dropped - ref).abs().max() > 10 * 1e-4 * float(ref.abs().max())

    assert torch.equal(_forward(model, kwargs), ref)  # restored


def test_the_check_sees_a_wrong_return_order():
    """The same check on a Flux model whose adapter swaps the streams' order fails: the test can fail. (As many text
    tokens as image tokens, so that the swapped streams still run.)"""
    from diffusers import FluxTransformer2DModel

    from dicache.adapters.base import ENCODER, HIDDEN, Adapter, BlockList

    class SwappedFlux(FluxTransformer2DModel):
        pass

    torch.manual_seed(0)
    model = SwappedFlux(**tiny.FLUX_CONFIG).eval()
    adapters.register(SwappedFlux, Adapter(family="flux", block_lists=(
        BlockList("transformer_blocks", returns=(HIDDEN, ENCODER)),
        BlockList("single_transformer_blocks", returns=(HIDDEN, ENCODER)),
    )))
    try:
        kwargs = tiny.flux_call()
        n_img = kwargs["hidden_states"].shape[1]
        kwargs.update(encoder_hidden_states=torch.randn(1, n_img, 32, generator=torch.Generator().manual_seed(5)),
                      txt_ids=torch.zeros(n_img, 3))
        ref = _forward(model, kwargs)
        out, pattern = _skipped_repeat(model, kwargs)
        assert pattern == "FF." and not _close(out, ref)
    finally:
        adapters._REGISTRY.pop(SwappedFlux, None)


def _controlnet(name, n_tokens, width=32):
    """Forward kwargs of ``name``'s one call with ControlNet residuals, as its ControlNet pipelines pass them."""
    g = torch.Generator().manual_seed(7)

    def res(k):
        return [torch.randn(1, n_tokens, width, generator=g) for _ in range(k)]

    make_model, make_kwargs = CASES[name]
    kwargs = make_kwargs()
    if name == "FluxTransformer2DModel":
        kwargs.update(controlnet_block_samples=res(2), controlnet_single_block_samples=res(3))
    elif name == "SD3Transformer2DModel":
        kwargs.update(block_controlnet_hidden_states=res(2))
    elif name == "SanaTransformer2DModel":
        kwargs.update(controlnet_block_samples=tuple(res(2)))
    else:
        kwargs.update(controlnet_block_samples=res(2))
    return make_model, kwargs


@pytest.mark.parametrize("name,n_tokens", [("FluxTransformer2DModel", 16), ("SD3Transformer2DModel", 16),
                                           ("SanaTransformer2DModel", 64), ("QwenImageTransformer2DModel", 16)])
@pytest.mark.parametrize("unprobed", [False, True])
def test_a_skip_adds_controlnet_residuals_once(name, n_tokens, unprobed):
    """These models add ControlNet residuals to the image stream between blocks: on a skipped call, with or without
    its probe, they were added again on top of the reconstruction, which already holds them (Flux: 0.42 off at an
    output scale of 1.9 on this model)."""
    make_model, kwargs = _controlnet(name, n_tokens)
    model = make_model()
    ref = _forward(model, kwargs)
    assert not torch.allclose(ref, _forward(model, CASES[name][1]()))  # the residuals change the output
    # plan_runs: the skipped call runs no probe (the hooks hand the inputs on from the first block)
    out, pattern = _skipped_repeat(model, kwargs, **({"plan_runs": True} if unprobed else {}))
    assert pattern == ("FF_" if unprobed else "FF.") and _close(out, ref)


def test_lumina2_pipeline_skips_with_its_rising_timesteps():
    """Lumina2Pipeline passes t = 1 − σ (rising) and runs CFG as two calls without ``cache_context``: one trajectory
    per pipeline call, two branches, each skipping; with δ = 0 the pipeline's output is bitwise its own."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Lumina2Pipeline

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, sample_size=32).eval()
    pipe = Lumina2Pipeline(transformer=CASES["Lumina2Transformer2DModel"][0](),
                           scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None)
    g = torch.Generator().manual_seed(100)
    embeds = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g),
                  negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
                  prompt_attention_mask=torch.ones(1, 8, dtype=torch.long),
                  negative_prompt_attention_mask=torch.ones(1, 8, dtype=torch.long))

    def call(steps=8):
        return pipe(**embeds, height=16, width=16, num_inference_steps=steps, guidance_scale=4.0,
                    generator=torch.Generator().manual_seed(3), output_type="latent").images

    ref = call()
    dicache.enable(pipe, backend="torch", threshold=0.0)
    assert torch.equal(call(), ref)
    dicache.disable(pipe)
    dicache.enable(pipe, backend="torch", threshold=1e9, warmup=2, force_last_step=1, cfg_decision="separate")
    call()
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    assert set(s.branches) == {"default", "default1"}
    assert all(b.calls == 8 and b.pattern.startswith("FF") and b.pattern.endswith("F") and b.skipped_calls >= 4
               for b in s.branches.values())
    # the default (no preset: the presets' rule on a 2× budget from 20 steps on) reads the rising timesteps as one
    # trajectory too
    dicache.enable(pipe, backend="torch")
    call(20)
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    assert s.rule == "target_speedup=2" and set(s.branches) == {"default", "default1"}
    assert all(b.calls == 20 and b.steps[-1].computed for b in s.branches.values())
    # 2× over both branches: the follower runs no probe on a skip, the leader's probes count for both (4 blocks)
    assert s.branches["default"].saved_fraction < s.branches["default1"].saved_fraction
    assert 1.8 <= s.block_reduction <= 2.2, str(s)
    # the factor the blocks fell by, what target_speedup aims at, beside the fraction saved, per branch and in total
    for part in [s, *s.branches.values()]:
        assert part.block_reduction == pytest.approx(1.0 / (1.0 - part.saved_fraction))
        assert f"{100 * part.saved_fraction:.1f}% of block evaluations saved ({part.block_reduction:.2f}× fewer)" \
            in str(s)


@pytest.mark.parametrize("name", ["ChromaTransformer2DModel", "Flux2Transformer2DModel"])
def test_a_probe_ending_in_the_joint_blocks_reads_their_image_tokens(name):
    """Chroma's and FLUX.2's single-stream blocks take ``[text | image]`` (``BlockList.joint``): a probe of the two
    double blocks and one single block measures the image tokens of that block's joint output."""
    make_model, make_kwargs = CASES[name]
    model, kwargs = make_model(), make_kwargs()
    ref = _forward(model, kwargs)
    out, pattern = _skipped_repeat(model, kwargs, probe_depth=3)
    assert pattern == "FF." and _close(out, ref)


def test_a_joint_list_declared_as_image_only_is_refused_by_the_shapes():
    """Without ``joint=True`` the single blocks' stream is longer than the image stream the cache keeps."""
    from dicache.adapters.base import ENCODER, HIDDEN, Adapter, BlockList

    make_model, make_kwargs = CASES["ChromaTransformer2DModel"]
    model = make_model()
    wrong = Adapter(family="chroma", block_lists=(
        BlockList("transformer_blocks", returns=(ENCODER, HIDDEN)),
        BlockList("single_transformer_blocks", returns=(HIDDEN,), encoder_arg=None),
    ))
    adapters.register(type(model), wrong)
    try:
        with pytest.raises(RuntimeError, match="size"):
            _skipped_repeat(model, make_kwargs())
    finally:
        adapters._REGISTRY.pop(type(model), None)  # the built-in declaration, by class name, again


def test_block_list_joint_must_be_a_bool():
    from dicache.adapters.base import BlockList

    with pytest.raises(TypeError, match="joint must be a bool"):
        BlockList("single_blocks", encoder_arg=None, joint="yes")


@pytest.mark.parametrize("skip_layers", [[0], [1, 2], [3]])
def test_sd3_skip_layer_guidance_calls_run_uncached(skip_layers):
    """SD3's skip-layer guidance calls the transformer with ``skip_layers``, which leaves blocks out (the probe
    block, or the last, which returns the reconstruction): such calls run without the cache and are not recorded
    (``bypass_args``); leaving out block 0 crashed before, even at δ = 0."""
    make_model, make_kwargs = CASES["SD3Transformer2DModel"]
    model, kwargs = make_model(), make_kwargs()
    slg = dict(kwargs, skip_layers=skip_layers)
    ref, ref_slg = _forward(model, kwargs), _forward(model, slg)
    assert not torch.equal(ref, ref_slg)
    dicache.enable(model, backend="torch", threshold=1e9, warmup=2, force_last_step=False, gamma_source="probe",
                   plan_runs=False, alignment_order=1, cfg_decision="separate")
    outs = []
    for i in range(3):
        with model.cache_context("cond", step_index=i, num_inference_steps=4):
            outs.append(_forward(model, kwargs))
            assert torch.equal(_forward(model, slg), ref_slg)  # uncached, between the cached calls
    branch = dicache.summary(model).branches["cond"]
    dicache.disable(model)
    assert branch.pattern == "FF." and _close(outs[2], ref)


def test_a_model_that_leaves_blocks_out_runs_uncached_or_refuses():
    """Without ``bypass_args``: a call that leaves out the first block runs uncached; one whose skip would need the
    last block it leaves out raises instead of returning a wrong output."""
    from dicache.adapters.sd3 import SD3

    make_model, make_kwargs = CASES["SD3Transformer2DModel"]
    model = make_model()
    kwargs = make_kwargs()
    adapters.register(type(model), Adapter(family="sd3", block_lists=SD3.block_lists))
    try:
        first_out = dict(kwargs, skip_layers=[0])
        ref = _forward(model, first_out)
        dicache.enable(model, backend="torch", threshold=0.0)
        assert torch.equal(_forward(model, first_out), ref)
        dicache.disable(model)
        dicache.enable(model, backend="torch", threshold=1e9, warmup=2, force_last_step=False, gamma_source="probe",
                       plan_runs=False, alignment_order=1, cfg_decision="separate")
        last_out = dict(kwargs, skip_layers=[3])
        for i in range(2):  # computed (warm-up) calls that leave the last block out are dropped: nothing stored
            with model.cache_context("cond", step_index=i, num_inference_steps=4):
                _forward(model, last_out)
        assert dicache.summary(model).branches["cond"].calls == 0
        for i in range(2):
            with model.cache_context("cond", step_index=i, num_inference_steps=4):
                _forward(model, kwargs)
        with pytest.raises(RuntimeError, match="did not run its last block"):
            with model.cache_context("cond", step_index=2, num_inference_steps=4):
                _forward(model, last_out)  # skipped after its probe, with no last block to return the output
        dicache.disable(model)
    finally:
        adapters._REGISTRY.pop(type(model), None)


def test_bypass_args_must_be_a_tuple_of_names():
    with pytest.raises(TypeError, match="bypass_args"):
        Adapter(family="x", block_lists=(), bypass_args="skip_layers")


def test_an_empty_skip_layers_is_a_cached_call():
    make_model, make_kwargs = CASES["SD3Transformer2DModel"]
    model = make_model()
    kwargs = dict(make_kwargs(), skip_layers=[])
    ref = _forward(model, kwargs)
    out, pattern = _skipped_repeat(model, kwargs)
    assert pattern == "FF." and _close(out, ref)
