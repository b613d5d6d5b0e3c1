"""The torch.library registration of the cache ops (``torch.ops.dicache.*``).

Runs on CPU tensors: the registered kernels dispatch to
``select_backend("auto", cpu)`` (the C++ "cpu" backend when built, else the
PyTorch reference), so these tests check the op schemas, mutation
annotations, fake (meta) implementations and torch.compile integration, not
the Triton kernels (tests/test_triton_kernels.py does that).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

import dicache.ops.library as lib  # noqa: E402
from dicache.ops import reference as ref  # noqa: E402

SHAPE = (2, 7, 13)
B = SHAPE[0]


def _gen(*parts):
    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))


def _probe_args(gen, *, has_old=True, with_xprev=True, dtype=torch.float32, error_mode=1, policy=1):
    def big():
        return torch.randn(SHAPE, generator=gen).to(dtype)

    p = big()
    return [
        p, big(), (p.float() + 0.1 * torch.randn(SHAPE, generator=gen)).to(dtype),
        big() if has_old else None,
        big() if with_xprev else None,
        torch.rand(B, generator=gen) * 0.2,  # acc
        torch.rand(B, generator=gen) * 100 + 50,  # den
        torch.full((B, ref.NUM_SUMS), float("nan")),  # sums
        torch.full((1,), -7, dtype=torch.int32),  # flag
        torch.full((B,), float("nan")),  # gamma
        0.3, 1.0, 1.5, policy, error_mode,
    ]


def _reconstruct_args(gen, *, has_old=True, dtype=torch.float32, oldest=False):
    args = [
        torch.randn(SHAPE, generator=gen).to(dtype),
        torch.randn(SHAPE, generator=gen).to(dtype),
        torch.randn(SHAPE, generator=gen).to(dtype) if has_old else None,
        1.0 + torch.rand(B, generator=gen),
        torch.full(SHAPE, float("nan"), dtype=dtype),
    ]
    if oldest:  # the quadratic's term: R[-3] and its weight per sample
        args += [torch.randn(SHAPE, generator=gen).to(dtype), torch.rand(B, generator=gen) - 0.5]
    return args


def _refresh_args(gen, *, has_other=True, dtype=torch.float32):
    return [
        torch.randn(SHAPE, generator=gen).to(dtype),
        torch.randn(SHAPE, generator=gen).to(dtype),
        torch.randn(SHAPE, generator=gen).to(dtype),
        torch.full(SHAPE, float("nan"), dtype=dtype),
        torch.full(SHAPE, float("nan"), dtype=dtype),
        torch.randn(SHAPE, generator=gen).to(dtype) if has_other else None,
        torch.full((B,), float("nan")),
        torch.rand(B, generator=gen) + 0.5,
    ]


def _quad_args(gen, *, fit=True, dtype=torch.float32, policy=1):
    args = [1.0 + torch.rand(B, generator=gen),  # gamma
            torch.rand(B, generator=gen) if not fit else torch.full((B,), float("nan")),  # w
            torch.full((B,), float("nan")), torch.full((B,), float("nan")), 3.0, 5.0, 6.0]
    if fit:
        args += [torch.randn(SHAPE, generator=gen).to(dtype) for _ in range(5)] + [2, policy]
    return args


def _clone(args):
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def _assert_same(mine, theirs):
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-5, equal_nan=True, msg=lambda m: f"arg {i}: {m}")
        else:
            assert a == b


# ---------------------------------------------------------------------------
# registration


def test_ops_are_registered_in_one_namespace():
    for name in ("probe_decide", "reconstruct", "refresh", "quad_blend"):
        op = getattr(torch.ops.dicache, name).default
        assert op.name() == f"dicache::{name}"


def test_mutation_annotations():
    def mutated(op):
        return {a.name for a in op.default._schema.arguments if a.alias_info is not None and a.alias_info.is_write}

    assert mutated(torch.ops.dicache.probe_decide) == {"p_prev", "x_prev", "acc", "sums", "flag", "gamma"}
    assert mutated(torch.ops.dicache.reconstruct) == {"out"}
    assert mutated(torch.ops.dicache.refresh) == {"r_slot", "p_slot", "den", "acc"}
    assert mutated(torch.ops.dicache.quad_blend) == {"w", "c0", "c2"}


def test_registration_is_idempotent():
    lib._register()  # a second registration is a no-op
    reloaded = importlib.reload(lib)
    assert reloaded.probe_decide is not None
    assert torch.ops.dicache.reconstruct.default.name() == "dicache::reconstruct"


def test_cpu_backend_choice():
    backend = lib.backend_for(torch.device("cpu"))
    assert backend.name in ("cpu", "torch")
    lib.clear_backend_cache()
    assert lib.backend_for(torch.device("cpu")).name == backend.name


# ---------------------------------------------------------------------------
# the registered ops compute what the reference computes


@pytest.mark.parametrize("has_old", [False, True])
@pytest.mark.parametrize("policy,error_mode", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_probe_decide_op_matches_reference(policy, error_mode, has_old):
    args = _probe_args(_gen("probe", policy, error_mode, has_old), has_old=has_old,
                       with_xprev=error_mode == 1, policy=policy, error_mode=error_mode)
    mine, theirs = _clone(args), _clone(args)
    lib.probe_decide(*mine)
    ref.probe_decide(*theirs)
    _assert_same(mine, theirs)
    assert mine[8].item() in (0, 1) and torch.isfinite(mine[9]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reconstruct_and_refresh_ops_match_reference(dtype):
    gen = _gen("recon-refresh", dtype)
    for has_old in (False, True):
        for oldest in ((False, True) if has_old else (False,)):
            args = _reconstruct_args(gen, has_old=has_old, dtype=dtype, oldest=oldest)
            mine, theirs = _clone(args), _clone(args)
            lib.reconstruct(*mine)
            ref.reconstruct(*theirs)
            _assert_same(mine, theirs)
        args = _refresh_args(gen, has_other=has_old, dtype=dtype)
        mine, theirs = _clone(args), _clone(args)
        lib.refresh(*mine)
        ref.refresh(*theirs)
        _assert_same(mine, theirs)


@pytest.mark.parametrize("fit,policy,dtype", [(False, 1, torch.float32), (True, 0, torch.float32),
                                              (True, 1, torch.bfloat16)])
def test_quad_blend_op_matches_reference(fit, policy, dtype):
    args = _quad_args(_gen("quad", fit, policy, dtype), fit=fit, policy=policy, dtype=dtype)
    mine, theirs = _clone(args), _clone(args)
    lib.quad_blend(*mine)
    ref.quad_blend(*theirs)
    _assert_same(mine, theirs)
    assert torch.isfinite(mine[1]).all() and torch.isfinite(mine[2]).all()


# ---------------------------------------------------------------------------
# opcheck: schema, fake tensor, AOT dispatch


@pytest.mark.parametrize(
    "has_old,with_xprev,policy,error_mode",
    [(True, True, 1, 1), (True, True, 0, 0), (False, False, 0, 0), (False, True, 1, 1)],
)
def test_opcheck_probe_decide(has_old, with_xprev, policy, error_mode):
    args = _probe_args(_gen("opcheck", has_old, with_xprev, policy, error_mode), has_old=has_old,
                       with_xprev=with_xprev, policy=policy, error_mode=error_mode)
    torch.library.opcheck(torch.ops.dicache.probe_decide.default, args)


@pytest.mark.parametrize("has_old,oldest", [(False, False), (True, False), (True, True)])
def test_opcheck_reconstruct(has_old, oldest):
    args = _reconstruct_args(_gen("oc-r", has_old, oldest), has_old=has_old, oldest=oldest)
    torch.library.opcheck(torch.ops.dicache.reconstruct.default, args)


@pytest.mark.parametrize("has_other", [False, True])
def test_opcheck_refresh(has_other):
    torch.library.opcheck(torch.ops.dicache.refresh.default, _refresh_args(_gen("oc-f", has_other), has_other=has_other))


@pytest.mark.parametrize("fit", [False, True])
def test_opcheck_quad_blend(fit):
    torch.library.opcheck(torch.ops.dicache.quad_blend.default, _quad_args(_gen("oc-q", fit), fit=fit))


def test_fake_tensors():
    """The ops run on FakeTensors (no data), leave every shape as it was, and check shapes."""
    gen = _gen("fake")
    real = [_probe_args(gen), _reconstruct_args(gen), _refresh_args(gen)]
    with FakeTensorMode() as mode:
        fake = [[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args] for args in real]
        lib.probe_decide(*fake[0])
        lib.reconstruct(*fake[1])
        lib.refresh(*fake[2])
        for args_f, args_r in zip(fake, real):
            for f, r in zip(args_f, args_r):
                if isinstance(r, torch.Tensor):
                    assert f.shape == r.shape and f.dtype == r.dtype
        bad = list(fake[1])
        bad[4] = torch.empty(B, 7, 12)
        with pytest.raises(ValueError, match="out"):
            lib.reconstruct(*bad)
        with pytest.raises(ValueError, match="go together"):  # R[-3] without its weight
            lib.reconstruct(*fake[1], fake[1][1])
        with pytest.raises(ValueError, match="r_oldest"):
            lib.reconstruct(*fake[1], torch.empty(B, 7, 12), torch.zeros(B))
        bad = list(fake[0])
        bad[9] = torch.empty(B + 1)
        with pytest.raises(ValueError, match="gamma"):
            lib.probe_decide(*bad)
        quad = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in _quad_args(gen)]
        lib.quad_blend(*quad)
        with pytest.raises(ValueError, match="go together"):
            lib.quad_blend(*quad[:8])  # p without x, p0, p1, p2
        bad = list(quad)
        bad[1] = torch.empty(B + 1)
        with pytest.raises(ValueError, match="w must have"):
            lib.quad_blend(*bad)


# ---------------------------------------------------------------------------
# torch.compile


def _one_skipped_call(p, x, p_prev, p_old, x_prev, acc, den, sums, flag, gamma, r_new, r_old, out, h, r_slot, p_slot):
    lib.probe_decide(p, x, p_prev, p_old, x_prev, acc, den, sums, flag, gamma, 0.3, 1.0, 1.5, 1, 1)
    lib.reconstruct(x, r_new, r_old, gamma, out)
    lib.refresh(h, p, x, r_slot, p_slot, p_old, den, acc)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    """probe_decide, reconstruct and refresh compile into one graph (no graph break) and mutate like eager."""
    gen = _gen("compile", backend)
    probe = _probe_args(gen)[:10]
    r_new, r_old, h = (torch.randn(SHAPE, generator=gen) for _ in range(3))
    out, r_slot, p_slot = (torch.full(SHAPE, float("nan")) for _ in range(3))
    mine = _compiled_like_eager(_one_skipped_call, probe + [r_new, r_old, out, h, r_slot, p_slot], backend)
    assert not torch.isnan(mine[12]).any() and not torch.isnan(mine[14]).any()


def _compiled_like_eager(fn, args, backend):
    """``fn`` under ``torch.compile(fullgraph=True)`` and eagerly, on copies of ``args``: the same in-place
    results. Returns the compiled run's arguments."""
    mine, theirs = _clone(args), _clone(args)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    with torch.no_grad():
        compiled(*mine)
        fn(*theirs)
    _assert_same(mine, theirs)
    return mine


def _quad_skip(gamma, w, c0, c2, p, x, p0, p1, p2, r0, r1, r2, out):
    lib.quad_blend(gamma, w, c0, c2, 3.0, 5.0, 6.0, p, x, p0, p1, p2, 2, 1)
    lib.reconstruct(x, r2, r1, c2, out, r0, c0)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_quad_blend(backend):
    """The presets' reconstruction (quad_blend's fit, then reconstruct with three entries) compiles into one
    graph and computes what eager does."""
    gen = _gen("compile-quad", backend)
    args = _quad_args(gen)[:4] + [torch.randn(SHAPE, generator=gen) for _ in range(8)] + [
        torch.full(SHAPE, float("nan"))]
    mine = _compiled_like_eager(_quad_skip, args, backend)
    assert torch.isfinite(mine[1]).all() and not torch.isnan(mine[12]).any()
