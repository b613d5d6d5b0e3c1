"""Each fused backend makes the same decisions as the reference end to end, with close outputs."""

import pytest
import torch

import dicache
from dicache import ops

import tiny

FUSED = [n for n in ("triton", "cpu") if ops.availability("cpu")[n] is None]
CASES = {
    "flux": (tiny.flux_pipeline, lambda p: tiny.flux_pipeline_call(p, steps=10), dict(threshold=0.3)),
    "wan": (tiny.wan_pipeline, lambda p: tiny.wan_pipeline_call(p, steps=10, negative_scale=20.0),
            dict(threshold=0.25, warmup=1)),
    "flux_max_policy": (tiny.flux_pipeline, lambda p: tiny.flux_pipeline_call(p, steps=10, batch=2),
                        dict(threshold=0.3, batch_policy="max")),
    "flux_probe_minus_input": (tiny.flux_pipeline, lambda p: tiny.flux_pipeline_call(p, steps=10),
                               dict(threshold=0.05, error="probe_minus_input")),
    # the model's output rebuilt (reconstruct_at): the same fused op on the output module's smaller tensors
    "wan_output": (tiny.wan_pipeline, lambda p: tiny.wan_pipeline_call(p, steps=10, negative_scale=20.0),
                   dict(threshold=0.25, warmup=2, gamma_source="steps", alignment_order=2, reconstruct_at="output")),
}


def _run(make, call, backend, options):
    pipe = make()
    dicache.enable(pipe, backend=backend, **options)
    out = call(pipe)
    s = dicache.summary(pipe)
    dicache.disable(pipe)
    return out, s


@pytest.mark.skipif(not FUSED, reason="no fused backend available here")
@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_decisions_as_reference(backend, case):
    make, call, options = CASES[case]
    ref_out, ref_s = _run(make, call, "torch", options)
    out, s = _run(make, call, backend, options)
    assert s.backend == backend
    assert ref_s.skipped_calls > 0
    assert (sum(b.outputs_rebuilt for b in ref_s.branches.values()) > 0) == ("reconstruct_at" in options)
    for name, b in ref_s.branches.items():
        assert s.branches[name].pattern == b.pattern
        assert s.branches[name].outputs_rebuilt == b.outputs_rebuilt
        for got, want in zip(s.branches[name].steps, b.steps):
            assert got.reason == want.reason
            if want.error is not None:
                assert got.error == pytest.approx(want.error, rel=1e-4, abs=1e-6)
            if want.gamma is not None:
                assert got.gamma == pytest.approx(want.gamma, rel=1e-4)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)


# On a GPU: the same pipelines on CUDA tensors, each kernel backend against the reference ops on the same GPU,
# with the options of the presets and the newer ones (predictive skips, the order picked by the probe, the
# compute budget with its unprobed skips).
FUSED_CUDA = [n for n in ("cuda", "triton") if torch.cuda.is_available() and ops.availability("cuda")[n] is None]
CUDA_CASES = {
    "flux": CASES["flux"],
    "wan": CASES["wan"],
    "flux_predictive_auto": (tiny.flux_pipeline, lambda p: tiny.flux_pipeline_call(p, steps=12),
                             dict(threshold=0.3, predictive_skip=True, alignment_order="auto")),
    "flux_budget": (tiny.flux_pipeline, lambda p: tiny.flux_pipeline_call(p, steps=12), dict(target_speedup=2.0)),
    "wan_output": CASES["wan_output"],
}


@pytest.mark.skipif(not FUSED_CUDA, reason="needs a CUDA device and a kernel backend for it")
@pytest.mark.parametrize("backend", FUSED_CUDA or ["cuda"])
@pytest.mark.parametrize("case", sorted(CUDA_CASES))
def test_same_decisions_as_reference_on_cuda(backend, case):
    make, call, options = CUDA_CASES[case]

    def on_cuda():
        return make().to("cuda")

    ref_out, ref_s = _run(on_cuda, call, "torch", options)
    out, s = _run(on_cuda, call, backend, options)
    assert s.backend == backend and out.is_cuda
    assert ref_s.skipped_calls > 0
    for name, b in ref_s.branches.items():
        assert s.branches[name].pattern == b.pattern
        assert s.branches[name].outputs_rebuilt == b.outputs_rebuilt
    torch.testing.assert_close(out, ref_out, rtol=1e-3, atol=1e-3)
