"""enable / disable / reset / summary: the public entry points."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from . import adapters
from .budget import check_profiles
from .config import DiCacheConfig, resolve, validate
from .engine import DiCacheEngine
from .hooks import Session, session_of
from .ops import BACKENDS, select_backend
from .summary import Summary, merge, summarize

_PIPELINE_ATTR = "_dicache_pipeline_link"


class AlreadyEnabledError(RuntimeError):
    """DiCache (or another diffusers cache) is already enabled on this model."""


class NotEnabledError(RuntimeError):
    """DiCache is not enabled on this target."""


def _flow_sigmas(scheduler: Any) -> bool:
    """Whether ``scheduler``'s sigmas can be flow sigmas: a scheduler without ``alphas_cumprod`` (the flow-matching
    ones; :func:`_step_sizes` also checks that its sigmas lie in [0, 1], which EDM's do not), or a diffusers scheduler
    of the DDPM family set to flow sigmas (``use_flow_sigmas``, ``prediction_type="flow_prediction"``; Wan's UniPC)."""
    config = getattr(scheduler, "config", None) or {}
    return (not isinstance(getattr(scheduler, "alphas_cumprod", None), torch.Tensor)
            or bool(config.get("use_flow_sigmas", False)) or config.get("prediction_type") == "flow_prediction")


def _step_sizes(scheduler: Any, n: Optional[int]) -> Optional[List[float]]:
    """``|σ_k − σ_(k+1)|`` for the ``n`` calls of a trajectory, from the scheduler's flow sigmas (n + 1 values, the
    flow-matching schedulers' and the diffusers schedulers' set to flow sigmas); None elsewhere. The engine predicts
    probe errors from them (the online budget rule, planned runs on the step sizes), a model measured on the
    flow-matching models. A DDPM-family scheduler tells none: its VE sigmas are another scale, and on the one such
    model measured (``cogvideox_digits``, DDIM) its steps put on the flow scale did not help (``benchmarks/RESULTS.md``,
    twenty-sixth round)."""
    sigmas = getattr(scheduler, "sigmas", None)
    if (n is None or not _flow_sigmas(scheduler) or not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1
            or sigmas.numel() != n + 1):
        return None
    sig = sigmas.detach().float().cpu().tolist()  # kept on the CPU by diffusers: no device sync
    if not all(0.0 <= v <= 1.0 + 1e-6 for v in sig):  # not flow sigmas after all: EDM's (σ up to 80), say
        return None
    return [abs(sig[k] - sig[k + 1]) for k in range(n)]


class _PipelineLink:
    """Wraps the pipeline scheduler's ``set_timesteps``: each pipeline call starts a new trajectory
    and tells the step count, with no host read and whatever the pipeline passes to ``cache_context``.
    A scheduler swapped in after ``enable`` (``pipe.scheduler = …from_config(…)``) is followed at the next
    transformer call (:meth:`follow`)."""

    def __init__(self, pipeline: Any, sessions: List[Session]):
        self.pipeline = pipeline
        self.sessions = sessions
        self.scheduler = getattr(pipeline, "scheduler", None)
        self._had_attr: Dict[str, bool] = {}
        # the trajectory the scheduler's timesteps set (``_start``): (its count, step sizes, whether the scheduler is a
        # flow-matching one: ``reconstruct_at="auto"`` reads it) over the whole schedule,
        # the index it begins at (None: not known yet), whether a call came before the scheduler's first step
        self._full: Optional[Tuple[Optional[int], Optional[List[float]], bool]] = None
        self._begin: Optional[int] = None
        self._saw_start = False
        self._loop_read = False  # whether this trajectory's first call read the pipeline's loop length (_read_loop)

    def install(self) -> None:
        self._wrap()
        setattr(self.pipeline, _PIPELINE_ATTR, self)

    #: the scheduler methods that (re)start a trajectory: its timesteps, and where img2img / inpaint pipelines begin in
    #: them (``set_begin_index``: ``strength`` < 1 runs the last part of the schedule only)
    WRAPPED = ("set_timesteps", "set_begin_index")

    def _wrap(self) -> None:
        scheduler = self.scheduler
        if scheduler is None or not hasattr(scheduler, "set_timesteps"):
            return
        self._had_attr = {name: name in vars(scheduler) for name in self.WRAPPED if hasattr(scheduler, name)}
        for name in self._had_attr:
            original = getattr(scheduler, name)

            def wrapper(*args, _original=original, **kwargs):
                out = _original(*args, **kwargs)
                self._start(scheduler, kwargs.get("num_inference_steps"))
                return out

            wrapper.__wrapped__ = original
            setattr(scheduler, name, wrapper)

    def _start(self, scheduler: Any, num_steps: Optional[int] = None) -> None:
        """A trajectory starts on ``scheduler``'s timesteps, from its begin index on where one is set."""
        timesteps = getattr(scheduler, "timesteps", None)
        n = len(timesteps) if timesteps is not None else num_steps
        self._full = (n, _step_sizes(scheduler, n), _flow_sigmas(scheduler))
        begin = getattr(scheduler, "begin_index", None)
        self._begin = begin if isinstance(begin, int) and n is not None and 0 <= begin < n else None
        self._saw_start = False
        self._loop_read = False
        self._rebase(self._begin or 0)

    def _read_loop(self) -> None:
        """At a trajectory's first transformer call: a pipeline whose loop runs more calls than its scheduler has
        timesteps, and says so in ``_num_timesteps`` (set before the loop: SkyReels-V2's diffusion forcing with
        ``ar_step`` > 0 runs ``num_inference_steps`` plus the frames' lag, each frame on its own copy of the
        scheduler), has a trajectory of that many calls, without step sizes (no call steps one sigma to the next
        of the schedule). Otherwise the calls after the scheduler's count would all count as the last steps
        (``force_last_step``) and be computed."""
        self._loop_read = True
        loop, (n, _, flow) = getattr(self.pipeline, "_num_timesteps", None), self._full
        if isinstance(loop, int) and not isinstance(loop, bool) and n is not None and loop > n and not self._begin:
            self._full = (loop, None, flow)
            self._rebase(0)

    def _rebase(self, begin: int) -> None:
        """The trajectory runs the schedule from ``begin`` on: its count and step sizes are that part's."""
        n, sizes, flow = self._full
        if begin > 0 and n is not None:
            n, sizes = n - begin, (sizes[begin:] if sizes is not None else None)
        for s in self.sessions:
            s.engine.flow_matching = flow
            if begin == 0:
                s.new_trajectory(n, sizes)
            else:  # learnt at the trajectory's second step: the calls so far stay
                s.pipeline_steps = n
                s.engine.set_step_sizes(sizes)

    def position(self, read_timestep: Optional[Callable[[], Optional[float]]] = None
                 ) -> Optional[Tuple[Optional[int], int]]:
        """Where the current transformer call sits on the trajectory, read off the scheduler's ``step_index`` (the
        index of the timestep it steps next): (that index, the step from the trajectory's start), or None where it
        is no clock (no step index, or the scheduler has not stepped yet: the trajectory's first step, or a
        scheduler the pipeline never steps). A pipeline that does not pass its step to ``cache_context`` (Wan 2.2's
        image-to-video with its second expert, Heun's two calls per step, video-to-video that runs the end of a
        schedule without ``set_begin_index``) is numbered by it: the beginning is learnt from the first index the
        scheduler reports, one step before it where calls came before the scheduler's first step.
        A scheduler without a step index (CogVideoX's DDIM) is placed once, at the trajectory's first call, by
        finding that call's timestep (``read_timestep``: one host read) in the schedule."""
        scheduler = self.scheduler
        if scheduler is None or self._full is None:
            return None
        if not self._loop_read:
            self._read_loop()
        if not hasattr(scheduler, "step_index"):
            if self._begin is None and read_timestep is not None:
                self._begin = 0
                t, timesteps = read_timestep(), getattr(scheduler, "timesteps", None)
                values = timesteps.tolist() if t is not None and isinstance(timesteps, torch.Tensor) else []
                begin = next((k for k, v in enumerate(values) if float(v) == t), 0)
                if begin > 0:
                    self._begin = begin
                    self._rebase(begin)
            return None
        index = scheduler.step_index
        n = self._full[0]
        if not (index is None or isinstance(index, int)) or (index is not None and n is not None and index >= n):
            return None  # no index, or past the schedule's end: a call outside the pipeline's loop
        if index is None:
            # before the scheduler's first step (the trajectory's first step), or a scheduler the pipeline does not
            # step (SkyReels-V2's diffusion forcing steps copies of it): not a clock until it has moved
            self._saw_start = True
            return None
        if self._begin is None:
            self._begin = max(0, index - int(self._saw_start))
            if self._begin > 0:
                self._rebase(self._begin)
        return index, index - self._begin

    def _unwrap(self) -> None:
        scheduler = self.scheduler
        for name, had in (self._had_attr or {}).items():
            if scheduler is not None and name in vars(scheduler):
                if had:
                    setattr(scheduler, name, getattr(scheduler, name).__wrapped__)
                else:
                    delattr(scheduler, name)

    def follow(self) -> None:
        """At each transformer call: if the pipeline's scheduler was replaced since the link was made, link the new
        one; the pipeline call in progress has already set its timesteps, so a trajectory starts on them now."""
        current = getattr(self.pipeline, "scheduler", None)
        if current is self.scheduler or current is None or not hasattr(current, "set_timesteps"):
            return
        self._unwrap()
        self.scheduler = current
        self._wrap()
        self._start(current)

    def uninstall(self) -> None:
        self._unwrap()
        if vars(self.pipeline).get(_PIPELINE_ATTR) is self:
            delattr(self.pipeline, _PIPELINE_ATTR)


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module itself under ``torch.compile``'s wrapper (``OptimizedModule._orig_mod``): the hooks go on it, and
    the compiled wrapper runs them."""
    while isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
        model = model._orig_mod
    return model


def _transformers_of(target: Any) -> Tuple[List[torch.nn.Module], Optional[Any]]:
    """The transformer(s) to hook, and the pipeline if ``target`` is one."""
    if isinstance(target, torch.nn.Module):
        return [_unwrapped(target)], None
    # Wan 2.2's low-noise expert is transformer_2 (either may be left out of a pipeline)
    models = [_unwrapped(m) for m in (getattr(target, name, None) for name in ("transformer", "transformer_2"))
              if isinstance(m, torch.nn.Module)]
    if models:
        return models, target
    raise TypeError(
        f"dicache.enable expects a diffusers pipeline with a .transformer or a transformer model "
        f"(torch.nn.Module), got {type(target).__name__}. {_supported_text()}"
    )


def _supported_text() -> str:
    return (
        f"Supported model classes: {', '.join(adapters.supported())}. For another DiT, declare its block lists "
        f"with dicache.adapters.register(ModelClass, dicache.adapters.Adapter(...)) (see the README)."
    )


def _device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def enable(
    target: Any,
    backend: str = "auto",
    config: Optional[DiCacheConfig] = None,
    engine_factory: Optional[Callable[..., DiCacheEngine]] = None,
    budget_profiles: Optional[Sequence[Mapping[str, Any]]] = None,
    **options: Any,
) -> Any:
    """Enable DiCache on a diffusers pipeline or on its transformer; returns ``target``.

    Args:
        target: a pipeline (``FluxPipeline``, ``WanPipeline``, ``HunyuanVideoPipeline``, …)
            or a transformer (``FluxTransformer2DModel``, ``WanTransformer3DModel``,
            ``HunyuanVideoTransformer3DModel``, or a class with a registered adapter).
        backend: how the cache arithmetic runs: ``"auto"`` (default), ``"torch"``,
            ``"triton"``, ``"cuda"`` or ``"cpu"``.
        config: a :class:`DiCacheConfig`; defaults to the model family's preset. A family without one gets
            the presets' rule with a compute budget of 2× from 20 steps on, δ = 0.2 below or where the step
            count is unknown (``dicache.config.GENERIC_BUDGET``); with a δ option, no budget
            (``dicache.config.GENERIC``).
        engine_factory: the extension point for other caches built on dicache's hooks, state
            and kernels: called as ``engine_factory(config, num_blocks, backend)`` per
            transformer, it returns a :class:`dicache.engine.DiCacheEngine` (usually a
            subclass overriding the decision). Default: ``DiCacheEngine``.
        budget_profiles: with ``target_speedup``, error profiles a budget measured before
            (``dicache.summary(pipe).budget_profiles`` after a call, saved as JSON in another process, on the
            same model and settings): the first call of their step counts replays them as a second call would,
            instead of predicting the errors online.
        **options: fields of :class:`DiCacheConfig` overriding ``config``/the preset.

    Nothing is changed on ``target`` when an error is raised.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if engine_factory is not None and not callable(engine_factory):
        raise TypeError(f"engine_factory must be a callable (config, num_blocks, backend) -> DiCacheEngine, "
                        f"got {type(engine_factory).__name__}")
    models, pipeline = _transformers_of(target)
    given = options if budget_profiles is None else dict(options, budget_profiles=budget_profiles)
    linked = _link_another_pipeline(pipeline, models, backend, config, engine_factory, given)
    if linked:
        return target

    plans = []
    for model in models:
        adapter = adapters.find(model)
        if adapter is None:
            raise TypeError(f"DiCache has no adapter for {type(model).__name__}. {_supported_text()}")
        if session_of(model) is not None:
            raise AlreadyEnabledError(
                f"DiCache is already enabled on this {type(model).__name__}; call dicache.disable() first."
            )
        if getattr(model, "_cache_config", None) is not None:
            raise AlreadyEnabledError(
                f"another diffusers cache is enabled on this {type(model).__name__}; call its disable_cache() first."
            )
        num_blocks = 0
        for spec in adapter.block_lists:
            blocks = getattr(model, spec.attr, None)
            if not isinstance(blocks, torch.nn.ModuleList):
                raise TypeError(
                    f"adapter {adapter.family!r} expects a ModuleList at {type(model).__name__}.{spec.attr}"
                )
            num_blocks += len(blocks)
        cfg = resolve(adapter.family, config, options)
        if num_blocks < 2:
            raise ValueError(f"DiCache needs a model with at least 2 blocks; {type(model).__name__} has {num_blocks}")
        validate(cfg, num_blocks)
        select_backend(backend, _device_of(model))  # raises now, with the reason, if it cannot run
        plans.append((model, adapter, cfg))
    built = []
    for (model, adapter, cfg), records in zip(plans, _profiles_per_model(budget_profiles, len(plans))):
        session = Session(model, adapter, cfg, backend, engine_factory)  # (hooks nothing until install)
        session.engine.load_budget_profiles(records)  # checked against this model and its settings
        built.append(session)

    sessions: List[Session] = []
    link = None
    try:
        for session in built:
            session.install()
            sessions.append(session)
        if pipeline is not None:
            link = _PipelineLink(pipeline, sessions)
            link.install()
            for s in sessions:
                s.pipeline_links.append(link)
    except BaseException:
        if link is not None:
            link.uninstall()
        for s in sessions:
            s.uninstall()
        raise
    return target


def _profiles_per_model(records: Any, count: int) -> List[List[Dict[str, Any]]]:
    """``budget_profiles`` split over ``count`` transformers as ``summary`` names their branches (``"1:cond"`` for
    the second of several); each engine checks its own against its model and settings
    (:meth:`DiCacheEngine.load_budget_profiles`)."""
    per: List[List[Dict[str, Any]]] = [[] for _ in range(count)]
    for r in [] if records is None else check_profiles(records, None):
        i, name = 0, r["branch"]
        head, sep, rest = name.partition(":")
        if count > 1 and sep and head.isdigit():
            i, name = int(head), rest
            if i >= count:
                raise ValueError(f"budget_profiles: branch {r['branch']!r} names transformer {i}; this target has "
                                 f"{count} (their branches are named as dicache.summary names them)")
        per[i].append(dict(r, branch=name))
    return per


def _sessions(target: Any) -> List[Session]:
    models, _ = _transformers_of(target)
    sessions = [s for s in (session_of(m) for m in models) if s is not None]
    if not sessions:
        raise NotEnabledError(f"DiCache is not enabled on this {type(target).__name__}")
    return sessions


def _link_another_pipeline(pipeline: Any, models: List[torch.nn.Module], backend: str,
                           config: Optional[DiCacheConfig], engine_factory: Any, options: Dict[str, Any]) -> bool:
    """``enable`` on a pipeline whose transformer(s) another pipeline already enabled (built on the same
    components with a scheduler of its own): with no settings given, link this pipeline's scheduler to the same
    cache, so that each of its calls starts a trajectory too, and return True; with settings, refuse. False where
    nothing is enabled yet."""
    sessions = [session_of(m) for m in models]
    if pipeline is None or not all(sessions):
        return False
    if config is not None or options or engine_factory is not None or backend != "auto":
        raise AlreadyEnabledError(
            f"DiCache is already enabled on this pipeline's {type(models[0]).__name__} (through another pipeline "
            "that shares it): call dicache.enable(pipe) without settings to link this pipeline to it, or "
            "dicache.disable() first to change them.")
    links = [link for s in sessions for link in s.pipeline_links]
    if any(link.pipeline is pipeline for link in links):
        raise AlreadyEnabledError(f"DiCache is already enabled on this {type(pipeline).__name__}; "
                                  "call dicache.disable() first.")
    if any(link.scheduler is getattr(pipeline, "scheduler", None) for link in links):
        return True  # its scheduler is linked already (a pipeline made with from_pipe shares it)
    link = _PipelineLink(pipeline, sessions)
    link.install()
    for s in sessions:
        s.pipeline_links.append(link)
    return True


def disable(target: Any) -> Any:
    """Remove DiCache: the model behaves exactly as if it had never been enabled. Returns ``target``."""
    for s in _sessions(target):
        s.uninstall()
        for link in s.pipeline_links:
            link.sessions.remove(s)
            if not link.sessions:
                link.uninstall()
        s.pipeline_links.clear()
    return target


def reset(target: Any) -> None:
    """Forget every cached tensor and record (the next call starts a new trajectory)."""
    for s in _sessions(target):
        s.new_trajectory()


def summary(target: Any) -> Summary:
    """What DiCache did since the last reset, per branch (the last generation, after a pipeline call)."""
    sessions = _sessions(target)
    prefix = len(sessions) > 1
    parts = tuple(
        summarize(s.engine, type(s.model).__name__, prefix=f"{i}:" if prefix and i else "")
        for i, s in enumerate(sessions)
    )
    return merge(parts)


def is_enabled(target: Any) -> bool:
    models, _ = _transformers_of(target)
    return any(session_of(m) is not None for m in models)
