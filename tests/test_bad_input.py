"""Bad input raises the named error and leaves the model exactly as it was."""

import pytest
import torch

import dicache
from dicache.adapters import Adapter, BlockList, register

import tiny


def _state(model):
    return {name: sorted(vars(m).keys()) for name, m in model.named_modules()}


BAD_OPTIONS = [
    (dict(threshold=-0.1), ValueError, "threshold"),
    (dict(threshold=float("nan")), ValueError, "threshold"),
    (dict(probe_depth=0), ValueError, "probe_depth"),
    (dict(probe_depth=5), ValueError, "probe_depth"),  # tiny Flux has 5 blocks
    (dict(probe_depth=1.5), ValueError, "probe_depth"),
    (dict(warmup=1.0), ValueError, "warmup"),
    (dict(warmup=-0.2), ValueError, "warmup"),
    (dict(warmup=-1), ValueError, "warmup"),
    (dict(warmup="20%"), ValueError, "warmup"),
    (dict(gamma_clip=(1.5, 1.0)), ValueError, "gamma_clip"),
    (dict(gamma_clip=(1.0,)), ValueError, "gamma_clip"),
    (dict(error="l2"), ValueError, "error"),
    (dict(batch_policy="mean"), ValueError, "batch_policy"),
    (dict(force_last_step="yes"), ValueError, "force_last_step"),
    (dict(force_last_step=-1), ValueError, "force_last_step"),
    (dict(force_last_step=1.5), ValueError, "force_last_step"),
    (dict(force_last_step=0.0), ValueError, "force_last_step"),
    (dict(force_last_step=-0.1), ValueError, "force_last_step"),
    (dict(force_last_step=float("nan")), ValueError, "force_last_step"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(thresold=0.1), TypeError, "thresold"),
    (dict(backend="tensorrt"), ValueError, "backend"),
]


@pytest.mark.parametrize("options,error,word", BAD_OPTIONS, ids=[str(o[0]) for o in BAD_OPTIONS])
def test_bad_option_raises_and_leaves_model_untouched(options, error, word):
    model = tiny.flux_transformer()
    before = _state(model)
    expected = tiny.flux_loop(model, steps=2)
    with pytest.raises(error, match=word):
        dicache.enable(model, **options)
    assert _state(model) == before
    assert not dicache.is_enabled(model)
    assert torch.equal(tiny.flux_loop(model, steps=2), expected)


def test_unsupported_model_lists_supported_classes_and_adapter_how_to():
    with pytest.raises(TypeError) as info:
        dicache.enable(torch.nn.Linear(2, 2))
    msg = str(info.value)
    assert "FluxTransformer2DModel" in msg and "WanTransformer3DModel" in msg
    assert "HunyuanVideoTransformer3DModel" in msg and "dicache.adapters.register" in msg
    with pytest.raises(TypeError, match="pipeline"):
        dicache.enable("not a model")


def test_find_class_reads_the_registry_by_class_and_base_class():
    from diffusers import FluxTransformer2DModel, WanTransformer3DModel

    from dicache.adapters import find, find_class

    assert find_class(FluxTransformer2DModel).family == "flux"
    assert find_class(WanTransformer3DModel).family == "wan"

    class MyFlux(FluxTransformer2DModel):  # a subclass finds its base class's adapter
        pass

    assert find_class(MyFlux).family == "flux"
    assert find_class(torch.nn.Linear) is None
    assert find(tiny.flux_transformer()) is find_class(FluxTransformer2DModel)
    with pytest.raises(TypeError, match="model_class"):
        find_class(tiny.flux_transformer())


def test_bad_config_object():
    with pytest.raises(TypeError, match="config"):
        dicache.enable(tiny.flux_transformer(), config={"threshold": 0.1})
    with pytest.raises(ValueError, match="threshold"):
        dicache.DiCacheConfig(threshold=-1)


def test_enable_twice_is_a_clear_error_and_keeps_the_first():
    model = tiny.flux_transformer()
    dicache.enable(model, backend="torch", threshold=0.0)
    state = _state(model)
    with pytest.raises(dicache.AlreadyEnabledError, match="already enabled"):
        dicache.enable(model, backend="torch")
    assert _state(model) == state
    dicache.disable(model)
    pipe = tiny.flux_pipeline()
    dicache.enable(pipe, backend="torch")
    with pytest.raises(dicache.AlreadyEnabledError):
        dicache.enable(pipe.transformer)
    dicache.disable(pipe)


def test_backend_that_cannot_run_says_why_and_which_can(monkeypatch):
    from dicache import ops

    def unavailable():
        raise ops.BackendUnavailableError("extension not built (test)")

    monkeypatch.setitem(ops._LOADERS, "cuda", unavailable)
    monkeypatch.setattr(ops, "_loaded", {})
    model = tiny.flux_transformer()
    before = _state(model)
    with pytest.raises(dicache.BackendUnavailableError) as info:
        dicache.enable(model, backend="cuda")
    assert "extension not built (test)" in str(info.value)
    assert "torch" in str(info.value)
    assert _state(model) == before


def test_disable_or_summary_when_not_enabled():
    model = tiny.flux_transformer()
    with pytest.raises(dicache.NotEnabledError):
        dicache.disable(model)
    with pytest.raises(dicache.NotEnabledError):
        dicache.summary(model)


class ToyDiT(torch.nn.Module):
    """A custom DiT: two lists of blocks; the head reads the image stream."""

    def __init__(self, width=8, depth=4):
        super().__init__()
        self.embed = torch.nn.Linear(4, width)
        self.layers = torch.nn.ModuleList(ToyBlock(width) for _ in range(depth))
        self.head = torch.nn.Linear(width, 4)

    def forward(self, sample, timestep):
        h = self.embed(sample) * (1 + timestep.reshape(-1, 1, 1) / 1000)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class ToyBlock(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.ff = torch.nn.Linear(width, width)

    def forward(self, hidden_states):
        return hidden_states + torch.tanh(self.ff(hidden_states))


def test_custom_adapter_for_a_user_dit():
    torch.manual_seed(0)
    model = ToyDiT()
    with pytest.raises(TypeError):
        dicache.enable(model)
    register(ToyDiT, Adapter(family="toy", block_lists=(BlockList("layers", encoder_arg=None),)))
    x = torch.randn(2, 5, 4)

    def loop():
        y = x
        for t in (900.0, 600.0, 300.0, 100.0):
            y = y - 0.2 * model(y, torch.full((2,), t))
        return y

    expected = loop()
    dicache.enable(model, backend="torch", threshold=0.0)
    assert torch.equal(loop(), expected)
    dicache.disable(model)
    dicache.enable(model, backend="torch", threshold=10.0, warmup=1)
    loop()
    assert dicache.summary(model).skipped_calls == 3
    dicache.disable(model)
    with pytest.raises(ValueError, match="returns"):
        BlockList("layers", returns=("encoder",))
