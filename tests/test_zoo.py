"""The model zoo: shipped weights load offline, sampling is deterministic, training runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dicache import zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4  # sampling steps in these tests (the defaults are 30 / 50)
EXPECTED = {
    "flux_digits": ("FluxTransformer2DModel", (16, 16)),
    "wan_digits": ("WanTransformer3DModel", (8, 16, 16)),
    "hunyuan_digits": ("HunyuanVideoTransformer3DModel", (8, 16, 16)),
    "sd3_digits": ("SD3Transformer2DModel", (16, 16)),
    "cogvideox_digits": ("CogVideoXTransformer3DModel", (8, 16, 16)),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is faster (and fair to a shared, loaded machine); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=zoo.NAMES)
def name_and_model(request):
    return request.param, zoo.load(request.param)


def _num_blocks(model) -> int:
    n = 0
    for attr in ("transformer_blocks", "single_transformer_blocks", "blocks"):
        n += len(getattr(model, attr, ()))
    return n


def test_names():
    assert set(zoo.NAMES) == set(EXPECTED)


def test_shipped_files_and_size():
    total = 0
    for name in zoo.NAMES:
        d = zoo.weights_dir(name)
        for f in ("config.json", "diffusion_pytorch_model.safetensors", "class_embeddings.safetensors"):
            path = os.path.join(d, f)
            assert os.path.isfile(path), path
            total += os.path.getsize(path)
    assert total <= 24 * 1024 * 1024, f"zoo weights are {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", zoo.NAMES)
def test_load_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import diffusers

    model = zoo.load(name)
    cls_name, _ = EXPECTED[name]
    assert type(model) is getattr(diffusers, cls_name)
    config = zoo.get_spec(name).config
    assert _num_blocks(model) == config["num_layers"] + config.get("num_single_layers", 0) >= 5  # a 1-block probe and 4+ to skip
    assert not model.training
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    with open(os.path.join(zoo.weights_dir(name), "config.json")) as f:
        assert json.load(f)["_class_name"] == cls_name
    emb, pooled = zoo.class_embeddings(name)
    assert emb.shape[0] == zoo.NUM_CLASSES + 1
    assert (pooled is not None) == (name in ("flux_digits", "hunyuan_digits", "sd3_digits"))
    assert (zoo.get_spec(name).objective == "v") == (name == "cogvideox_digits")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_load_without_accelerate_matches_from_pretrained(dtype, monkeypatch):
    """diffusers refuses Wan (fp32-kept modules) without accelerate; the fallback loads the same tensors."""
    ref = zoo.load("wan_digits", torch_dtype=dtype).state_dict()
    import diffusers.utils

    monkeypatch.setattr(diffusers.utils, "is_accelerate_available", lambda: False)
    got = zoo.load("wan_digits", torch_dtype=dtype).state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert ref[k].dtype == got[k].dtype and torch.equal(ref[k], got[k]), k


def test_sample_deterministic(name_and_model):
    name, model = name_and_model
    a = zoo.sample(name, [3, 7], seed=1, num_inference_steps=STEPS, transformer=model)
    b = zoo.sample(name, [3, 7], seed=1, num_inference_steps=STEPS, transformer=model)
    c = zoo.sample(name, [3, 7], seed=2, num_inference_steps=STEPS, transformer=model)
    assert a.shape == (2, *EXPECTED[name][1])
    assert a.dtype == torch.float32 and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pipeline_calls_cache_contexts(name_and_model):
    """The real pipeline runs every transformer call inside cache_context("cond") / ("uncond"); SD3's and CogVideoX's
    batch the two into one call per step, CogVideoX's in cache_context("cond_uncond"), SD3's in none (its transformer
    has no cache context)."""
    name, model = name_and_model
    batched = zoo.get_spec(name).cfg_batched
    if not hasattr(model, "cache_context"):  # SD3Transformer2DModel: no CacheMixin in diffusers 0.42
        assert batched and name == "sd3_digits"
        return
    seen = []
    orig = model.cache_context

    def spy(ctx_name, **kw):
        seen.append(ctx_name)
        return orig(ctx_name, **kw)

    model.cache_context = spy
    try:
        zoo.sample(name, [0], seed=0, num_inference_steps=3, transformer=model)
        assert seen == (["cond_uncond"] if batched else ["cond", "uncond"]) * 3
        seen.clear()
        zoo.sample(name, [0], seed=0, num_inference_steps=3, guidance_scale=1.0, transformer=model)
        assert seen == (["cond_uncond"] if batched else ["cond"]) * 3
    finally:
        del model.cache_context


def test_guidance_changes_sample(name_and_model):
    name, model = name_and_model
    a = zoo.sample(name, [5], seed=0, num_inference_steps=STEPS, guidance_scale=1.0, transformer=model)
    b = zoo.sample(name, [5], seed=0, num_inference_steps=STEPS, guidance_scale=4.0, transformer=model)
    assert not torch.allclose(a, b)


def test_samples_are_recognisable(name_and_model):
    """A k-NN digit classifier fitted on load_digits reads the asked-for class from most samples."""
    pytest.importorskip("sklearn")
    name, model = name_and_model
    image = not zoo.get_spec(name).video
    labels = list(range(10)) * (2 if image else 1)
    steps = 12 if image else 10
    imgs = zoo.sample(name, labels, seed=0, num_inference_steps=steps, transformer=model)
    assert zoo.class_accuracy(name, imgs, labels) >= 0.8


def test_grid(tmp_path):
    imgs = torch.rand(6, 16, 16)
    g = zoo.make_grid(imgs, nrow=3, scale=2, pad=1)
    assert g.shape == (2 * 33 + 1, 3 * 33 + 1)
    vids = torch.rand(2, 8, 16, 16)
    assert zoo.make_grid(vids, scale=1).shape == (2 * 17 + 1, 8 * 17 + 1)
    path = zoo.save_grid(vids, str(tmp_path / "g.png"))
    from PIL import Image

    assert Image.open(path).size == (8 * 65 + 1, 2 * 65 + 1)


@pytest.mark.parametrize("name", zoo.NAMES)
def test_encode_decode_roundtrip(name):
    pix = torch.rand(2, *EXPECTED[name][1])
    assert torch.allclose(zoo.decode(name, zoo.encode(name, pix)), pix, atol=1e-6)


def test_v_objective_is_the_schedulers_noising():
    """cogvideox_digits trains on v-prediction: x_t and v from the scheduler it samples with, so that
    x0 = √ᾱ·x_t − √(1 − ᾱ)·v and ε = √(1 − ᾱ)·x_t + √ᾱ·v hold at every drawn timestep (fresh random inputs)."""
    from dicache.zoo.train import _noising

    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(64, 4, 3, 5, 7, generator=g), torch.randn(64, 4, 3, 5, 7, generator=g)
    xt, t, v = _noising("cogvideox_digits", g)(x0, eps)
    assert t.dtype == torch.int64 and t.shape == (64,) and 0 <= int(t.min()) and int(t.max()) < 1000
    assert len(set(t.tolist())) > 30  # drawn, not one timestep
    ac = zoo.make_scheduler("cogvideox_digits").alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)
    assert torch.allclose(ac.sqrt() * xt - (1 - ac).sqrt() * v, x0, atol=1e-5)
    assert torch.allclose((1 - ac).sqrt() * xt + ac.sqrt() * v, eps, atol=1e-5)
    xt_f, sigma, target = _noising("flux_digits", g)(x0, eps)  # rectified flow: σ in (0, 1), velocity ε − x0
    s = sigma.view(-1, 1, 1, 1, 1)
    assert sigma.dtype == torch.float32 and torch.allclose(xt_f, (1 - s) * x0 + s * eps) and torch.equal(target, eps - x0)


def test_train_script_runs(tmp_path):
    """scripts/train_zoo.py trains a few steps from scratch and writes loadable weights."""
    pytest.importorskip("sklearn")
    out = tmp_path / "flux"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train_zoo.py"), "flux_digits", "--steps", "3",
         "--out", str(out), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "training time" in r.stdout
    info = json.loads((out / "training.json").read_text())
    assert info["steps"] == 3 and info["threads"] == 1
    imgs = zoo.sample("flux_digits", [1], seed=0, num_inference_steps=2, path=str(out))
    assert imgs.shape == (1, 16, 16)


@pytest.mark.parametrize("name", ["wan_digits", "hunyuan_digits", "cogvideox_digits"])
def test_train_is_deterministic(tmp_path, name):
    """Two runs of the same recipe write bit-identical weights (what makes the shipped ones reproducible)."""
    pytest.importorskip("sklearn")
    from safetensors.torch import load_file

    from dicache.zoo.train import train

    for run in ("a", "b"):
        train(name, steps=2, batch_size=4, out_dir=str(tmp_path / run), progress=False)
    for f in ("diffusion_pytorch_model.safetensors", "class_embeddings.safetensors"):
        a, b = load_file(str(tmp_path / "a" / f)), load_file(str(tmp_path / "b" / f))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
