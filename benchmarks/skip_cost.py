"""What a skipped call costs, against a full call, on a Flux-class model of realistic width: DiCache
and the peers that run on the same bare transformer.

    python benchmarks/skip_cost.py [--width 1024] [--tokens 1024] [--repeats 3] [--backend auto]
    python benchmarks/skip_cost.py --width 256 --heads 4 --tokens 256 --repeats 1 --threads 1   # smoke
    python benchmarks/skip_cost.py --methods dicache fbc --md out.md --json out.json
    python benchmarks/skip_cost.py --device cuda --dtype bfloat16 --width 3072 --heads 24 --layers 19 \
        --single-layers 38 --tokens 4096 --text-tokens 512 --backend torch triton cuda   # Flux.1 size on a GPU

Random weights (timing only). Each method runs a sequence of ``--calls`` calls (timestep going
down, each inside ``cache_context("cond", step_index=i, sigma=…, num_inference_steps=…)`` as a
pipeline enters it) with settings under which every call after its warm-up is skipped (a huge
threshold, no cap on consecutive reuse). The calls in which the method did not compute the whole
model are its *skipped calls*, found by instrumentation, not assumed.

**Instrumentation** (installed on a fresh copy of the model before the method is enabled, so that
the method wraps it): every block's ``forward`` is replaced by a timer, which runs only when the
method really lets the block compute (a cache hook that hands the inputs on or returns a
prediction never calls it); forward pre/post hooks time every block *call* (the method's hook
included); the ``attn`` module of every block is timed the same way. Per skipped call:

* **blocks that run** — the time inside the blocks' own ``forward`` (less any cache arithmetic
  spied inside it, e.g. TaylorSeer's attention predictions);
* **cache work in block calls** — block call time outside the blocks' ``forward``: the method's
  decision, its reconstruction, handing inputs on;
* **cache work outside blocks** — the rest of the call beyond the model's own non-block work
  (embedding, RoPE, output head: measured per call on the uncached model): root hooks, cache-dit's
  block wrapper, SeaCache's spectral indicator, … (negative where a method skips part of the
  non-block work: TaylorSeer-Lite predicts ``proj_out``);
* **cache arithmetic (spied)** — the part of both that is the method's own decision/reconstruction
  functions, timed by wrapping them where they are separable: DiCache ``engine.after_probe`` (fused
  probe statistics, decision, one flag read, reconstruction); FirstBlockCache
  ``_should_compute_remaining_blocks`` (decision only; its residual and reconstruction adds are
  inline); cache-dit ``can_cache`` + ``apply_cache``; TaylorSeer ``predict``; SeaCache
  ``_build_indicator`` + ``resolve_gate`` (its reconstruction add is inline); MagCache has none (a
  scalar decision and one inline add).

**Overhead** = cache work in and outside block calls = skipped call − blocks that run − the model's
own non-block time; the issue's target is overhead ≤ 10 % of one block (mean block time of a full
call). **Ideal** skipped call = the model's non-block time + the blocks the method must run by
design (``m`` of ``M``: DiCache/FirstBlockCache/cache-dit F1B0 run block 0; MagCache, SeaCache and
TaylorSeer-Lite run none; TaylorSeer in attention mode runs every block but its attention, so its
ideal is a full call less the attention time).

**The computed call that ends a run** (with ``dicache`` among ``--methods``): a skip is not DiCache's only work.
The call computed right after a run of skips also runs the probe statistics and stores its entries, and with
``hindsight`` rebuilds the run's rule at its own step and adds back part of the run's miss (one ``reconstruct`` and
one ``lerp`` over the image tokens). DiCache runs again at one skip between computed calls
(``max_consecutive_reuse=1``), with ``hindsight`` 0 and at the model family's preset share, and each computed call
that follows a skip is timed against the uncached full calls of a trajectory run on the same copy of the model right
before it: *cache work* = that call − a full call (medians), per backend; and, as for the skipped call, the engine's
own work on it timed directly around ``engine.after_probe`` and ``engine.after_full`` (*spied*: the probe's
statistics and decision, the entries stored, hindsight's rebuild and lerp), which a machine whose speed drifts
between trajectories reads far more precisely than a difference of two whole calls. The two rows' difference is
what ``hindsight`` costs.

Prints markdown (also ``--md``); ``--json`` writes every number. Medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import io
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # cache-dit logs every enable at INFO

import torch  # noqa: E402

import dicache  # noqa: E402


#: Called before every clock read: ``torch.cuda.synchronize`` when the model runs on a GPU (``--device
#: cuda``), so that each timer sees the kernels its code launched finish; nothing on the CPU.
_sync: Callable[[], None] = lambda: None


def _now() -> float:
    _sync()
    return time.perf_counter()


def _free() -> None:
    """Drop a model copy now: its blocks and the instrument's timers form reference cycles, which only
    the garbage collector breaks (on a GPU, Flux.1-size copies would otherwise pile up: 24 GB each)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_model(width: int, heads: int, layers: int, single_layers: int):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    head_dim = width // heads  # rotary axes must add up to the head dim (Flux: 16 + 56 + 56 = 128)
    axes = (head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=layers, num_single_layers=single_layers,
        attention_head_dim=width // heads, num_attention_heads=heads, joint_attention_dim=256,
        pooled_projection_dim=128, guidance_embeds=True, axes_dims_rope=axes,
    ).eval()


def make_inputs(tokens: int, text_tokens: int = 64, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    out = dict(
        hidden_states=torch.randn(1, tokens, 64, generator=g),
        encoder_hidden_states=torch.randn(1, text_tokens, 256, generator=g),
        pooled_projections=torch.randn(1, 128, generator=g),
        img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text_tokens, 3),
        guidance=torch.full((1,), 3.5),
    )
    out = {k: v.to(device, dtype if k not in ("img_ids", "txt_ids") else torch.float32) for k, v in out.items()}
    return dict(out, return_dict=False)


def block_list(model) -> List[torch.nn.Module]:
    return list(model.transformer_blocks) + list(model.single_transformer_blocks)


# ---------------------------------------------------------------------------
# instrumentation


class Instrument:
    """Per call: each block's compute time (its own forward ran), each block call's time, attention
    compute time, and spied cache arithmetic inside / outside the blocks' compute."""

    def __init__(self, model):
        self.blocks = block_list(model)
        self.depth = 0  # > 0 while some block's own forward runs
        self.rec: Optional[Dict[str, Any]] = None
        self._handles = []
        self._t0: Dict[int, float] = {}
        self._spied: List[Tuple[Any, str, Any]] = []
        self.has_attn: List[bool] = []
        for i, block in enumerate(self.blocks):
            block.forward = self._timed(block.forward, "compute", i)
            self._handles.append(block.register_forward_pre_hook(functools.partial(self._pre, i)))
            self._handles.append(block.register_forward_hook(functools.partial(self._post, i)))
            attn = getattr(block, "attn", None)
            self.has_attn.append(isinstance(attn, torch.nn.Module))
            if self.has_attn[-1]:
                attn.forward = self._timed(attn.forward, "attn", i)

    def _timed(self, fwd, key: str, i: int):
        @functools.wraps(fwd)
        def timed(*args, **kwargs):
            self.depth += 1
            t0 = _now()
            try:
                return fwd(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.rec is not None:
                    self.rec[key][i] += _now() - t0
                    self.rec[key + "_n"][i] += 1

        return timed

    def _pre(self, i, mod, args):
        self._t0[i] = _now()

    def _post(self, i, mod, args, out):
        if self.rec is not None:
            self.rec["call"][i] += _now() - self._t0.pop(i)

    def spy(self, owner: Any, name: str) -> None:
        """Time ``owner.name`` (a method, patched on its class or on one instance) as cache arithmetic."""
        raw = getattr(owner, name)  # on a class: the plain function; on an instance: the bound method
        saved = owner.__dict__.get(name)  # restored by unspy (None: delete the patch)
        inst = self

        @functools.wraps(raw)
        def timed(*args, **kwargs):
            return inst._arith(raw, args, kwargs)

        self._spied.append((owner, name, saved))
        setattr(owner, name, timed)

    def _arith(self, fn, args, kwargs):
        inside = self.depth > 0
        t0 = _now()
        try:
            return fn(*args, **kwargs)
        finally:
            if self.rec is not None:
                self.rec["arith_in" if inside else "arith_out"] += _now() - t0

    def unspy(self) -> None:
        for owner, name, saved in reversed(self._spied):
            if saved is not None:
                setattr(owner, name, saved)
            else:
                delattr(owner, name)
        self._spied.clear()

    def new_record(self) -> Dict[str, Any]:
        M = len(self.blocks)
        self.rec = {k: [0.0] * M for k in ("compute", "call", "attn")}
        self.rec.update({k: [0] * M for k in ("compute_n", "attn_n")})
        self.rec.update(arith_in=0.0, arith_out=0.0, total=0.0)
        return self.rec

    def remove(self) -> None:
        self.unspy()
        for h in self._handles:
            h.remove()


def run_calls(model, inst: Instrument, inputs, n_calls: int) -> List[Dict[str, Any]]:
    """A trajectory of ``n_calls`` calls (timestep going down), each recorded."""
    rows = []
    device, dtype = inputs["hidden_states"].device, inputs["hidden_states"].dtype
    with torch.no_grad():
        for i in range(n_calls):
            sigma = 1.0 - i / n_calls
            rec = inst.new_record()
            t0 = _now()
            with model.cache_context("cond", step_index=i, num_inference_steps=n_calls, sigma=sigma):
                model(timestep=torch.full((1,), sigma, device=device, dtype=dtype), **inputs)
            rec["total"] = _now() - t0
            rows.append(rec)
    inst.rec = None
    return rows


# ---------------------------------------------------------------------------
# the methods, set up so that every call after the warm-up is skipped


class Unsupported(Exception):
    pass


@dataclass
class Method:
    key: str
    name: str
    m: Optional[int]  # blocks a skipped call must run by design (None: not a block count, see ideal)
    enable: Callable[[Any], None]
    disable: Callable[[Any], None]
    spies: Callable[[Any], List[Tuple[Any, str]]] = lambda model: []
    note: str = ""
    attention_ideal: bool = False  # ideal = full call − attention time (TaylorSeer attention mode)


def flux_raw_vision(module, args, kwargs) -> Optional[List[torch.Tensor]]:
    """SeaCache's raw latents for a Flux call: the packed image tokens [B, N, 64] as (64, 1, √N, √N)
    per sample (SeaCache ships adapters for Wan T2V and Cosmos 3 only)."""
    hs = kwargs.get("hidden_states", args[0] if args else None)
    if not isinstance(hs, torch.Tensor) or hs.ndim != 3:
        return None
    B, N, C = hs.shape
    side = math.isqrt(N)
    if side * side != N:
        return None
    return [hs[b].transpose(0, 1).reshape(C, 1, side, side) for b in range(B)]


def dicache_on(args, warm: int, backend: str, **options) -> Callable[[Any], None]:
    """DiCache's ``enable`` for these runs: every call after ``warm`` skipped (δ 1e9, no cap on consecutive reuse,
    no forced last step; ``options`` on top), on ``backend``, at ``--alignment-order`` where given."""
    order = {} if args.alignment_order is None else {"alignment_order": args.alignment_order}
    settings = dict(threshold=1e9, warmup=warm, probe_depth=1, max_consecutive_reuse=None, force_last_step=False,
                    **order)
    settings.update(options)

    def enable(m):
        dicache.enable(m, backend=backend, **settings)

    return enable


def build_methods(args, warm: int, n_calls: int) -> List[Method]:
    out: List[Method] = []

    order_text = "" if args.alignment_order is None else f", alignment_order={args.alignment_order}"
    for backend in args.backend:  # one row per DiCache backend
        out.append(Method(
            "dicache", f"DiCache (m=1, backend={backend}{order_text})", 1, dicache_on(args, warm, backend),
            dicache.disable,
            lambda m: [(dicache.hooks.session_of(m).engine, "after_probe")],
            "threshold 1e9: the fused probe statistics and decision still run on every call"))

    def fbc_on(m):
        from diffusers.hooks import FirstBlockCacheConfig

        m.enable_cache(FirstBlockCacheConfig(threshold=1e9))

    def fbc_spies(m):
        from diffusers.hooks.first_block_cache import FBCHeadBlockHook

        return [(FBCHeadBlockHook, "_should_compute_remaining_blocks")]

    out.append(Method("fbc", "diffusers FirstBlockCache", 1, fbc_on, lambda m: m.disable_cache(), fbc_spies,
                      "spied: the decision only (residual and reconstruction adds are inline)"))

    def mag_on(m):
        from diffusers import MagCacheConfig

        m.enable_cache(MagCacheConfig(
            threshold=1e9, max_skip_steps=10**6, retention_ratio=warm / n_calls, num_inference_steps=n_calls,
            mag_ratios=torch.ones(n_calls)))

    out.append(Method("magcache", "diffusers MagCache", 0, mag_on, lambda m: m.disable_cache(), lambda m: [],
                      "uniform mag_ratios (1.0), K unbounded; its decision is scalar and its reconstruction "
                      "one inline add"))

    def ts_on(lite: bool):
        def enable(m):
            from diffusers import TaylorSeerCacheConfig

            kw = dict(cache_interval=10**6, disable_cache_before_step=warm, max_order=1,
                      taylor_factors_dtype=torch.float32)
            if lite:
                kw["use_lite_mode"] = True
            m.enable_cache(TaylorSeerCacheConfig(**kw))
            hooked = [n for n, mod in m.named_modules()
                      if getattr(mod, "_diffusers_hook", None) is not None
                      and mod._diffusers_hook.get_hook("taylorseer_cache") is not None]
            if not hooked:
                raise Unsupported("its module patterns match no module of this model")

        return enable

    def ts_spies(m):
        from diffusers.hooks.taylorseer_cache import TaylorSeerState

        return [(TaylorSeerState, "predict")]

    out.append(Method("taylorseer_lite", "diffusers TaylorSeer-Lite", 0, ts_on(True), lambda m: m.disable_cache(),
                      ts_spies, "blocks return zeros of the recorded shape, proj_out predicted (order 1); "
                      "one compute at warm-up + 1 (its schedule)"))
    out.append(Method("taylorseer_attn", "diffusers TaylorSeer (attention)", None, ts_on(False),
                      lambda m: m.disable_cache(), ts_spies,
                      "default patterns: every block's attn predicted (order 1), the rest of each block runs",
                      attention_ideal=True))

    def dbcache_on(m):
        try:
            import cache_dit
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise Unsupported(f"cache-dit is not installed ({e})") from None
        cfg = cache_dit.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0,
            # cache-dit takes a threshold >= 1.0 as "always similar" and then skips the diff itself:
            # stay below it so that the skipped call pays for its decision
            residual_diff_threshold=0.99,
            max_warmup_steps=warm, num_inference_steps=n_calls, max_cached_steps=-1, max_continuous_cached_steps=-1,
            enable_separate_cfg=False)
        with contextlib.redirect_stdout(io.StringIO()):
            cache_dit.enable_cache(m, cache_config=cfg)

    def dbcache_off(m):
        import cache_dit

        cache_dit.disable_cache(m)

    def dbcache_spies(m):
        from cache_dit.caching.cache_contexts.cache_manager import CachedContextManager

        return [(CachedContextManager, "can_cache"), (CachedContextManager, "apply_cache")]

    out.append(Method("dbcache", "cache-dit DBCache (F1B0)", 1, dbcache_on, dbcache_off, dbcache_spies,
                      "residual_diff_threshold 0.99 (≥ 1.0 would skip computing the diff)"))

    def sea_on(m):
        from diffusers import SeaCacheConfig

        m.enable_cache(SeaCacheConfig(threshold=1e9, residual_order=1, retention_steps=warm, cache_end_steps=0,
                                      max_consecutive_cached=0, raw_vision_callback=flux_raw_vision))

    def sea_spies(m):
        from diffusers.hooks.sea_cache import SeaCacheLeaderBlockHook, SeaCacheSharedState

        return [(SeaCacheLeaderBlockHook, "_build_indicator"), (SeaCacheSharedState, "resolve_gate")]

    out.append(Method("seacache", "diffusers SeaCache", 0, sea_on, lambda m: m.disable_cache(), sea_spies,
                      "our raw_vision_callback (packed Flux tokens as a 64×1×√N×√N latent); residual order 1, "
                      "no cap on consecutive reuse"))
    return out


METHOD_KEYS = ("dicache", "fbc", "magcache", "taylorseer_lite", "taylorseer_attn", "dbcache", "seacache")


class _Warnings(logging.Handler):
    """The warnings the diffusers cache hooks log (SeaCache's fail-open, MagCache's mismatches)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    @contextlib.contextmanager
    def capturing(self):
        log = logging.getLogger("diffusers.hooks")
        old = log.level, log.propagate
        log.setLevel(logging.WARNING)
        log.propagate = False
        log.addHandler(self)
        try:
            yield self
        finally:
            log.removeHandler(self)
            log.setLevel(old[0])
            log.propagate = old[1]


# ---------------------------------------------------------------------------
# measurement


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def measure_full(base, inputs, n_calls: int, repeats: int) -> Dict[str, Any]:
    """The uncached model: per-block compute, attention and non-block time (medians over calls 1..)."""
    totals, nonblock, attn, blocks = [], [], [], []
    for _ in range(repeats):
        model = copy.deepcopy(base)
        inst = Instrument(model)
        for r in run_calls(model, inst, inputs, n_calls)[1:]:
            totals.append(r["total"])
            nonblock.append(r["total"] - sum(r["call"]))
            attn.append(sum(r["attn"]))
            blocks.append(r["compute"])
        inst.remove()
        del model, inst
        _free()
    M = len(blocks[0])
    block_med = [med([b[i] for b in blocks]) for i in range(M)]
    return dict(total=med(totals), total_iqr=iqr(totals), nonblock=med(nonblock), nonblock_iqr=iqr(nonblock),
                attn=med(attn), blocks=block_med, mean_block=sum(block_med) / M, calls=len(totals))


def measure_method(base, inputs, method: Method, n_calls: int, repeats: int) -> Dict[str, Any]:
    """Every skipped call of ``repeats`` trajectories, decomposed (see the module docstring)."""
    per_call: List[Dict[str, float]] = []
    warnings: List[str] = []
    pattern: List[str] = []
    M = None
    for _ in range(repeats):
        model = copy.deepcopy(base)
        inst = Instrument(model)
        M = len(inst.blocks)
        cap = _Warnings()
        try:
            with cap.capturing():
                try:
                    method.enable(model)
                except Unsupported as e:
                    return dict(status="unsupported", reason=str(e))
                except Exception as e:  # a peer that cannot run on this model becomes a row with the reason
                    return dict(status="error", reason=f"{type(e).__name__}: {e}")
                for owner, name in method.spies(model):
                    inst.spy(owner, name)
                rows = run_calls(model, inst, inputs, n_calls)
                inst.unspy()
                method.disable(model)
        finally:
            inst.remove()
        warnings.extend(cap.messages)
        marks = []
        for r in rows:
            full_blocks = all(n > 0 for n in r["compute_n"])
            full_attn = all(n > 0 for n, has in zip(r["attn_n"], inst.has_attn) if has)
            skipped = not (full_blocks and full_attn)
            marks.append("." if skipped else "F")
            if not skipped:
                continue
            compute = sum(r["compute"])
            calls = sum(r["call"])
            arith = r["arith_in"] + r["arith_out"]
            per_call.append(dict(
                total=r["total"], run=compute - r["arith_in"], in_blocks=calls - compute + r["arith_in"],
                outside=r["total"] - calls, arith=arith, blocks_run=sum(1 for n in r["compute_n"] if n > 0)))
        pattern.append("".join(marks))
        del model, inst
        _free()
    if not per_call:
        return dict(status="no-skip", reason=f"no call was skipped (pattern {' '.join(pattern)})", pattern=pattern,
                    warnings=sorted(set(warnings)))
    keys = ("total", "run", "in_blocks", "outside", "arith", "blocks_run")
    out = {k: med([c[k] for c in per_call]) for k in keys}
    out.update(status="ok", skipped_calls=len(per_call), pattern=pattern, warnings=sorted(set(warnings)), M=M,
               per_call=per_call)
    return out


def measure_computed(base, inputs, enable: Callable[[Any], None], n_calls: int, repeats: int) -> Dict[str, Any]:
    """The calls DiCache computes right after a skipped one, over ``repeats`` trajectories with ``enable`` (set up
    to skip one call in two after its warm-up): each one's time, the call patterns, how many runs ``hindsight``
    corrected, and the uncached calls of a trajectory run right before each (calls 1.., the baseline paired with
    them: the machine's speed moves between the phases of a run)."""
    totals: List[float] = []
    arith: List[float] = []
    full: List[float] = []
    pattern: List[str] = []
    corrected = 0
    for _ in range(repeats):
        model = copy.deepcopy(base)
        inst = Instrument(model)
        try:
            full += [r["total"] for r in run_calls(model, inst, inputs, n_calls)[1:]]
            enable(model)
            engine = dicache.hooks.session_of(model).engine
            for name in ("after_probe", "after_full"):  # the probe's statistics and decision; the entries stored,
                inst.spy(engine, name)                  # hindsight's rebuild and lerp
            rows = run_calls(model, inst, inputs, n_calls)
            inst.unspy()
            corrected += sum(s.hindsight_runs for s in engine.branches.values())
            dicache.disable(model)
        finally:
            inst.remove()
        marks = ["F" if all(n > 0 for n in r["compute_n"]) else "." for r in rows]
        ends = [r for k, r in enumerate(rows) if k > 0 and marks[k] == "F" and marks[k - 1] == "."]
        totals += [r["total"] for r in ends]
        arith += [r["arith_in"] + r["arith_out"] for r in ends]
        pattern.append("".join(marks))
        del model, inst
        _free()
    return dict(totals=totals, arith=arith, full=full, pattern=pattern, hindsight_runs=corrected)


def computed_rows(args, base, inputs, full: Dict[str, Any], warm: int) -> List[Dict[str, Any]]:
    """DiCache's computed call that ends a run, per backend, with ``hindsight`` 0 and at the preset's share: its
    time against the uncached full call (:func:`measure_computed`)."""
    preset_share = dicache.config.preset("flux").hindsight  # the model is Flux-class: its family's preset
    rows = []
    for backend in args.backend:
        for h in (0.0, preset_share):
            enable = dicache_on(args, warm, backend, max_consecutive_reuse=1, hindsight=h)  # one skip in two
            r = measure_computed(base, inputs, enable, args.calls, args.repeats)
            base_ms = med(r["full"])
            work = [t - base_ms for t in r["totals"]]
            rows.append(dict(backend=backend, hindsight=h, calls=len(r["totals"]), hindsight_runs=r["hindsight_runs"],
                             pattern=" ".join(r["pattern"]), computed_ms=1e3 * med(r["totals"]),
                             full_ms=1e3 * base_ms, computed_over_full=med(r["totals"]) / base_ms,
                             work_ms=1e3 * med(work), work_iqr_ms=1e3 * iqr(work),
                             work_of_block=med(work) / full["mean_block"], arith_ms=1e3 * med(r["arith"]),
                             arith_iqr_ms=1e3 * iqr(r["arith"]), arith_of_block=med(r["arith"]) / full["mean_block"]))
    return rows


def computed_markdown(rows: List[Dict[str, Any]]) -> str:
    """:func:`computed_rows` as a markdown table."""
    lines = ["The computed call that ends a run (one skip between computed calls): its time against the uncached "
             "full calls of a trajectory run right before each; cache work = that call − a full call; spied: the "
             "engine's own work on it, timed around `after_probe` and `after_full` (medians)", "",
             "| DiCache backend | hindsight | computed calls after a skip | runs corrected | ms | full call ms "
             "| / full call | cache work ms (IQR) | spied cache arithmetic ms (IQR) | spied / one block "
             "| call patterns |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['hindsight']:g} | {r['calls']} | {r['hindsight_runs']} | "
                     f"{r['computed_ms']:.1f} | {r['full_ms']:.1f} | {r['computed_over_full']:.3f} | "
                     f"{r['work_ms']:.2f} ({r['work_iqr_ms']:.2f}) | {r['arith_ms']:.2f} ({r['arith_iqr_ms']:.2f}) | "
                     f"{100 * r['arith_of_block']:.2f} % | `{r['pattern']}` |")
    return "\n".join(lines)


def summarize(name: str, method: Method, r: Dict[str, Any], full: Dict[str, Any]) -> Dict[str, Any]:
    """The derived columns of one method's row."""
    if r.get("status") != "ok":
        return dict(method=name, status=r.get("status"), reason=r.get("reason", ""))
    nb, mean_block, M = full["nonblock"], full["mean_block"], len(full["blocks"])
    outside = [c["outside"] - nb for c in r["per_call"]]
    overhead = [c["total"] - c["run"] - nb for c in r["per_call"]]
    if method.attention_ideal:
        ideal, m_over_M = full["total"] - full["attn"], None
    else:
        ideal, m_over_M = nb + sum(full["blocks"][: method.m]), method.m / M
    ov = med(overhead)
    return dict(
        method=name, status="ok", m=method.m, M=M, m_over_M=m_over_M, skipped_calls=r["skipped_calls"],
        pattern=" ".join(r["pattern"]), skipped_ms=1e3 * r["total"], skipped_over_full=r["total"] / full["total"],
        ideal_ms=1e3 * ideal, ideal_over_full=ideal / full["total"], blocks_run=r["blocks_run"],
        run_ms=1e3 * r["run"], in_blocks_ms=1e3 * r["in_blocks"], outside_ms=1e3 * med(outside),
        arith_ms=1e3 * r["arith"], overhead_ms=1e3 * ov, overhead_iqr_ms=1e3 * iqr(overhead),
        overhead_of_block=ov / mean_block, meets_target=ov / mean_block <= 0.10,
        warnings=r["warnings"], note=method.note)


def markdown(rows: List[Dict[str, Any]], full: Dict[str, Any], head: str) -> str:
    lines = [head, "",
             "| method | m/M | skipped calls | skipped call ms | skipped / full | ideal / full | blocks that run ms "
             "| cache work in block calls ms | cache work outside blocks ms | spied cache arithmetic ms "
             "| overhead ms (IQR) | overhead / one block (target ≤ 10 %) | note |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | – | – | – | – | – | – | – | – | – | – | – | **{r['status']}**: {r['reason']} |")
            continue
        mm = "attn. only" if r["m_over_M"] is None else f"{r['m']}/{r['M']} = {r['m_over_M']:.3f}"
        ar = "–" if r["arith_ms"] == 0 else f"{r['arith_ms']:.2f}"
        verdict = "✓" if r["meets_target"] else "✗"
        note = r["note"]
        fail_open = [w for w in r["warnings"] if "fail-open" in w or "running full" in w]
        if fail_open:
            note += f"; FAIL-OPEN warnings: {' | '.join(fail_open)[:200]}"
        lines.append(
            f"| {r['method']} | {mm} | {r['skipped_calls']} | {r['skipped_ms']:.1f} | {r['skipped_over_full']:.3f} | "
            f"{r['ideal_over_full']:.3f} | {r['run_ms']:.1f} ({r['blocks_run']:.0f} blocks) | {r['in_blocks_ms']:.2f} | "
            f"{r['outside_ms']:.2f} | {ar} | {r['overhead_ms']:.2f} ({r['overhead_iqr_ms']:.2f}) | "
            f"{100 * r['overhead_of_block']:.1f} % {verdict} | {note} |")
    lines.append("")
    lines.append("Call patterns (F = full, . = skipped), one per run: " + "; ".join(
        f"{r['method']}: `{r['pattern']}`" for r in rows if r["status"] == "ok"))
    return "\n".join(lines)


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2, help="double-stream blocks")
    ap.add_argument("--single-layers", type=int, default=6, help="single-stream blocks")
    ap.add_argument("--tokens", type=int, default=1024, help="image tokens (a square number for SeaCache)")
    ap.add_argument("--repeats", type=int, default=3, help="trajectories per method")
    ap.add_argument("--calls", type=int, default=8, help="calls per trajectory")
    ap.add_argument("--warmup", type=int, default=3, help="full calls before skipping starts")
    ap.add_argument("--backend", nargs="+", default=["auto"], help="DiCache's backend(s): one row each")
    ap.add_argument("--methods", nargs="+", default=list(METHOD_KEYS), choices=METHOD_KEYS)
    ap.add_argument("--alignment-order", type=lambda v: v if v == "auto" else int(v), choices=(1, 2, "auto"),
                    help="DiCache's alignment_order (default: the model family's preset, \"auto\" for Flux)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timers then synchronize the GPU before each read)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--md", help="also write the markdown to this file")
    ap.add_argument("--json", help="also write every number to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.calls <= args.warmup:
        ap.error("--calls must exceed --warmup")

    t_start = time.perf_counter()
    global _sync
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda":
        _sync = torch.cuda.synchronize
    with torch.device(device):  # random init on the device: seconds, not minutes, at full Flux size
        base = make_model(args.width, args.heads, args.layers, args.single_layers).to(dtype)
    _free()  # the fp32 weights the model was made with
    inputs = make_inputs(args.tokens, args.text_tokens, device, dtype)
    M = args.layers + args.single_layers
    full = measure_full(base, inputs, args.calls, args.repeats)

    methods = [m for m in build_methods(args, args.warmup, args.calls) if m.key in args.methods]
    rows, raw = [], {}
    for method in methods:
        t0 = time.perf_counter()
        r = measure_method(base, inputs, method, args.calls, args.repeats)
        raw[method.name] = {k: v for k, v in r.items() if k != "per_call"}
        rows.append(summarize(method.name, method, r, full))
        print(f"  {method.name}: {r.get('status')} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)

    computed = []
    if "dicache" in args.methods:
        t0 = time.perf_counter()
        computed = computed_rows(args, base, inputs, full, args.warmup)
        print(f"  DiCache computed calls: {len(computed)} rows ({time.perf_counter() - t0:.1f} s)", file=sys.stderr,
              flush=True)

    nb, mb = full["nonblock"], full["mean_block"]
    head = "\n".join([
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}" + (f"; GPU {torch.cuda.get_device_name(device)} (timers synchronize it)"
                                        if device.type == "cuda" else ""),
        f"model: Flux-class, width {args.width} ({args.heads} heads), {M} blocks ({args.layers} double + "
        f"{args.single_layers} single), {args.tokens} image + {args.text_tokens} text tokens, {args.dtype}, random weights; "
        f"{args.repeats} runs of {args.calls} calls (warm-up {args.warmup}); medians over skipped calls",
        f"full call {1e3 * full['total']:.1f} ms (IQR {1e3 * full['total_iqr']:.1f}): blocks "
        f"{1e3 * sum(full['blocks']):.1f} ms (mean block {1e3 * mb:.1f} ms, block 0 {1e3 * full['blocks'][0]:.1f} ms; "
        f"attention {1e3 * full['attn']:.1f} ms), non-block {1e3 * nb:.1f} ms (IQR {1e3 * full['nonblock_iqr']:.2f})",
        f"ideal skipped call with m = 1: {1e3 * (nb + full['blocks'][0]):.1f} ms = "
        f"{(nb + full['blocks'][0]) / full['total']:.3f} of a full call (m/M = {1 / M:.3f}); with m = 0: "
        f"{1e3 * nb:.1f} ms = {nb / full['total']:.3f}",
        f"10 % of one block = {1e3 * 0.1 * mb:.2f} ms; run time {time.perf_counter() - t_start:.0f} s, peak RSS "
        f"{peak_rss_gb():.2f} GB",
    ])
    text = markdown(rows, full, head)
    if computed:
        text += "\n\n" + computed_markdown(computed)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "full": full, "rows": rows, "raw": raw, "computed_rows": computed}, f,
                      indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
