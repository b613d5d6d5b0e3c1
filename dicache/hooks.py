"""Binds the engine into a model's own block loop through diffusers' hooks.

No model code is copied: the model's ``forward`` runs as written and DiCache
sits on its blocks (diffusers ``HookRegistry``/``ModelHook``, as its
FirstBlockCache does):

* a root hook on the transformer starts each call: it picks the branch (the
  ``cache_context`` name, or the call's order within a timestep when there is
  none), the step index and step count, and detects a new trajectory;
* a hook on every block: block 0 records the image tokens ``x``; the last probe
  block asks the engine; on a skip the remaining blocks hand their inputs on
  unchanged, in the order their successor expects; on a full call the last
  block's output refreshes the cache;
* where the config rebuilds the model's output (``reconstruct_at``), a hook on
  the adapter's output module (``proj_out``) stores its output on a full call
  and returns the rebuilt one on a skip.

Everything installed here is recorded and removed by :func:`uninstall`, which
leaves the model as if it had never been enabled.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

from .adapters import Adapter, ArgLocator, image_of, image_part, pack, with_image, with_image_part
from .config import DiCacheConfig
from .engine import DiCacheEngine

_ROOT_HOOK = "dicache_root"
_BLOCK_HOOK = "dicache_block"
_OUTPUT_HOOK = "dicache_output"
SESSION_ATTR = "_dicache_session"


class _ContextSink(StateManager):
    """Receives diffusers' ``cache_context`` (it is set on every stateful hook's StateManager)."""

    def __init__(self) -> None:
        super().__init__(object)

    def current(self):
        return self._context


def _against(direction: int, last: float, t: float) -> Tuple[bool, int]:
    """A timestep ``t`` after a different one, ``last``, in a loop that does not tell its steps: (whether it moved
    against the direction the trajectory's timesteps move in, which starts a new trajectory; that direction after
    ``t``). Most schedules count down (Flux, Wan, HunyuanVideo); some pipelines pass rising ones (Lumina2, Z-Image,
    Mochi's inverted sigmas): the second timestep of a trajectory sets its direction."""
    moved = 1 if t > last else -1
    if direction == 0:
        return False, moved
    return moved != direction, direction


class Session:
    """DiCache enabled on one transformer: its engine, its hooks, its trajectory tracking."""

    def __init__(self, model: torch.nn.Module, adapter: Adapter, config: DiCacheConfig, backend: str,
                 engine_factory=None):
        self.model = model
        self.adapter = adapter
        self.config = config
        self.blocks: List[Tuple[torch.nn.Module, Any]] = []  # (block, BlockList)
        for spec in adapter.block_lists:
            for block in getattr(model, spec.attr):
                self.blocks.append((block, spec))
        self.engine = (engine_factory or DiCacheEngine)(config, len(self.blocks), backend)
        if not isinstance(self.engine, DiCacheEngine):
            raise TypeError(f"engine_factory must return a dicache.engine.DiCacheEngine, got {type(self.engine).__name__}")
        self.sink = _ContextSink()
        self.timestep = ArgLocator(type(model).forward, adapter.timestep_arg)
        self.bypass = [ArgLocator(type(model).forward, name) for name in adapter.bypass_args]
        self.pipeline_steps: Optional[int] = None  # set by the pipeline's scheduler hook
        self.pipeline_links: List[Any] = []  # the pipelines whose scheduler starts this cache's trajectories (api)
        self.user_steps: Optional[int] = config.num_inference_steps
        # per-call state
        self.active = False
        self.skipping = False
        self.recon: Optional[torch.Tensor] = None  # a skipped call's output, returned by the last block
        self.recon_returned = False
        self.x: Optional[torch.Tensor] = None
        # bare-loop trajectory tracking (no cache_context)
        self._last_t: Optional[float] = None
        self._last_pos = False  # _last_t holds the scheduler's step index of the last call (None: its first step)
        self._calls_at_t = 0
        self._direction = 0  # +1 / −1: the timesteps of the trajectory rise / fall; 0: not known yet
        self._branch_t: Dict[str, Optional[float]] = {}  # per named branch, when no step index is given
        self._branch_dir: Dict[str, int] = {}
        self._installed: List[Tuple[torch.nn.Module, str, bool, bool]] = []

    # -- trajectory -------------------------------------------------------
    def new_trajectory(self, num_steps: Optional[int] = None, step_sizes: Optional[List[float]] = None) -> None:
        """Forget all branches (a pipeline call starts, or dicache.reset); a pipeline call also tells the step
        count and the scheduler's step sizes (:meth:`DiCacheEngine.set_step_sizes`)."""
        self.engine.reset()
        if num_steps is not None:
            self.pipeline_steps = num_steps
            self.engine.set_step_sizes(step_sizes)
        self._last_t = None
        self._last_pos = False
        self._calls_at_t = 0
        self._direction = 0
        self._branch_t.clear()
        self._branch_dir.clear()

    def bypassed(self, args, kwargs) -> bool:
        """Whether this call passes one of the adapter's ``bypass_args`` (it leaves blocks out: no cache)."""
        for arg in self.bypass:
            v = arg.get(args, kwargs)
            if v is None:
                continue
            try:
                if len(v) == 0:
                    continue
            except TypeError:  # no length (a number, a 0-d tensor): given
                pass
            return True
        return False

    def _read_timestep(self, args, kwargs) -> Optional[float]:
        t = self.timestep.get(args, kwargs)
        if t is None:
            return None
        if isinstance(t, torch.Tensor):
            return float(t.reshape(-1)[0])  # a host read; only in loops without cache_context
        return float(t)

    def _position(self, args, kwargs):
        """(the scheduler's step index, the step in the trajectory) of this call, from a linked pipeline's
        scheduler (``_PipelineLink.position``), or None."""
        for link in self.pipeline_links:
            link.follow()  # a scheduler swapped in since enable
        for link in self.pipeline_links:
            pos = link.position(lambda: self._read_timestep(args, kwargs))
            if pos is not None:
                return pos
        return None

    def begin_call(self, args, kwargs) -> None:
        pos = self._position(args, kwargs)
        ctx = self.sink.current()
        step_index = getattr(ctx, "step_index", None) if ctx is not None else None
        num_steps = getattr(ctx, "num_inference_steps", None) if ctx is not None else None
        if num_steps is None:
            num_steps = self.pipeline_steps if self.pipeline_steps is not None else self.user_steps
        if ctx is not None:
            branch = ctx.name
            state = self.engine.branches.get(branch)
            if step_index is not None:
                if step_index == 0 and state is not None and state.calls > 0:
                    self.engine.reset(branch)
            elif pos is not None:
                step_index = pos[1]  # the pipeline's scheduler numbers the call
            elif self.pipeline_steps is None:
                # A context without step index and no pipeline to tell when a trajectory starts: the timestep
                # tells (a named branch is called once per step: the same timestep again, or one against the
                # direction its timesteps move in, starts a new trajectory).
                t = self._read_timestep(args, kwargs)
                last = self._branch_t.get(branch)
                if t is not None and last is not None:
                    again, self._branch_dir[branch] = _against(self._branch_dir.get(branch, 0), last, t)
                    if again or t == last:
                        self.engine.reset(branch)
                        self._branch_dir[branch] = 0
                self._branch_t[branch] = t
        elif pos is not None:
            # No cache_context, a linked pipeline: calls at the same scheduler step are different branches (CFG as
            # two calls; Heun's two calls at one timestep are two steps), and the scheduler numbers them
            if self._last_pos and pos[0] == self._last_t:
                self._calls_at_t += 1
            else:
                self._calls_at_t = 0
            self._last_t, self._last_pos = pos[0], True
            step_index = pos[1]
        else:
            # No cache_context: calls at the same timestep are different branches (CFG as two calls);
            # a timestep against the direction the timesteps move in starts a new trajectory.
            t = self._read_timestep(args, kwargs)
            if t is not None and self._last_t is not None and t == self._last_t and not self._last_pos:
                self._calls_at_t += 1
            else:
                self._calls_at_t = 0
                if t is not None and self._last_t is not None:
                    again, self._direction = _against(self._direction, self._last_t, t)
                    if again:
                        self.engine.reset()
                        self._direction = 0
            self._last_t, self._last_pos = t, False
        if ctx is None:
            branch = "default" if self._calls_at_t == 0 else f"default{self._calls_at_t}"
        self.engine.begin_call(branch, step_index, num_steps)
        self.active = True
        self.skipping = False
        self.recon = None
        self.recon_returned = False
        self.x = None

    def end_call(self) -> None:
        self.active = False
        self.skipping = False
        self.recon = None
        self.x = None
        self.engine.abort_call()  # no-op after a completed call; drops an unfinished one

    # -- install / uninstall -------------------------------------------
    def _register(self, module: torch.nn.Module, hook: ModelHook, name: str) -> None:
        had_registry = "_diffusers_hook" in module.__dict__
        had_forward = "forward" in module.__dict__
        registry = HookRegistry.check_if_exists_or_initialize(module)
        registry.register_hook(hook, name)
        self._installed.append((module, name, had_registry, had_forward))

    def install(self) -> None:
        try:
            self._register(self.model, _RootHook(self), _ROOT_HOOK)
            m = self.config.probe_depth
            last = len(self.blocks) - 1
            for i, (block, spec) in enumerate(self.blocks):
                self._register(block, _BlockHook(self, i, m, last, spec, block), _BLOCK_HOOK)
            output = self.output_module()
            if output is not None:
                self._register(output, _OutputHook(self), _OUTPUT_HOOK)
            setattr(self.model, SESSION_ATTR, self)
        except BaseException:
            self.uninstall()
            raise
        HookRegistry.check_if_exists_or_initialize(self.model).invalidate_child_registries_cache()

    def output_module(self) -> Optional[torch.nn.Module]:
        """The adapter's output module on this model, where the config may rebuild the model's output
        (``reconstruct_at``); None otherwise, or where the model has no such submodule."""
        name = self.adapter.output_module
        if name is None or self.config.reconstruct_at == "blocks":
            return None
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            return None

    def uninstall(self) -> None:
        for module, name, had_registry, had_forward in reversed(self._installed):
            registry = module.__dict__.get("_diffusers_hook")
            if registry is None:
                continue
            registry.remove_hook(name, recurse=False)
            if not registry.hooks:
                if not had_forward:
                    module.__dict__.pop("forward", None)
                if not had_registry:
                    del module._diffusers_hook
        self._installed.clear()
        registry = self.model.__dict__.get("_diffusers_hook")
        if registry is not None:
            registry.invalidate_child_registries_cache()
        self.model.__dict__.pop(SESSION_ATTR, None)


class _RootHook(ModelHook):
    """On the transformer: starts and ends each call."""

    _is_stateful = True  # so that diffusers hands us the cache_context

    def __init__(self, session: Session):
        super().__init__()
        self.session = session
        self.sink = session.sink  # a StateManager attribute: found by _set_cache_context

    def new_forward(self, module, *args, **kwargs):
        s = self.session
        if s.bypassed(args, kwargs):
            return self.fn_ref.original_forward(*args, **kwargs)  # the blocks see no active call
        s.begin_call(args, kwargs)
        try:
            out = self.fn_ref.original_forward(*args, **kwargs)
            if s.skipping and s.engine.output_pending():
                raise RuntimeError(
                    f"DiCache skipped this {type(module).__name__} call to rebuild its output at its output module "
                    f"({s.adapter.output_module!r}), but the model did not run it: the output would be wrong. Set "
                    "reconstruct_at='blocks', or name the module the model runs last in the adapter's output_module.")
            if s.skipping and not s.recon_returned:
                raise RuntimeError(
                    f"DiCache skipped the deep blocks of this {type(module).__name__} call, but the model did not run "
                    "its last block, which returns the reconstruction: the output would be wrong. Declare the "
                    "forward argument that leaves blocks out in the adapter's bypass_args.")
            return out
        finally:
            s.end_call()

    def reset_state(self, module):
        # Pipelines call this at the end of a generation (maybe_free_model_hooks): free the cached
        # tensors, keep the records for dicache.summary; the next pipeline call starts a new trajectory.
        self.session.engine.release()
        return module


class _BlockHook(ModelHook):
    """On each block: record ``x``, decide after the probe, hand inputs on when skipping, refresh."""

    def __init__(self, session: Session, index: int, probe_depth: int, last: int, spec, block):
        super().__init__()
        self.session = session
        self.index = index
        self.is_probe_end = index == probe_depth - 1
        self.in_tail = index >= probe_depth
        self.is_last = index == last
        self.returns = spec.returns
        self.joint = spec.joint
        forward = type(block).forward
        self.hidden = ArgLocator(forward, spec.hidden_arg)
        self.encoder = ArgLocator(forward, spec.encoder_arg) if spec.encoder_arg else None

    def new_forward(self, module, *args, **kwargs):
        s = self.session
        if not s.active or (self.index > 0 and s.x is None):
            # no call of ours, or the model left the first block out of this one: it runs uncached (not recorded)
            return self.fn_ref.original_forward(*args, **kwargs)
        if self.index == 0:
            s.x = self.hidden.get(args, kwargs)
            h = s.engine.before_probe(s.x)
            if h is not None:  # skipped without a probe: every block hands its inputs on
                s.skipping, s.recon = True, h
        if s.skipping:
            # The skipped blocks hand their inputs on, and the last one returns the reconstruction: whatever the
            # model's own code adds to the stream between blocks (ControlNet residuals) is part of the stored
            # deep output up to the last block, and is added after the last block as on a computed call.
            hidden = self.hidden.get(args, kwargs)
            if self.is_last:
                hidden = with_image_part(hidden, s.recon) if self.joint else s.recon
                s.recon_returned = True
            encoder = self.encoder.get(args, kwargs) if self.encoder is not None else None
            return pack(self.returns, hidden, encoder)
        out = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_probe_end:
            h = s.engine.after_probe(s.x, self._image(image_of(out, self.returns), s))
            if h is not None:
                s.skipping, s.recon = True, h
                if not self.is_last:
                    return out
                s.recon_returned = True
                stream = image_of(out, self.returns)
                return with_image(out, self.returns, with_image_part(stream, h) if self.joint else h)
        if self.is_last:
            s.engine.after_full(self._image(image_of(out, self.returns), s))
        return out

    def _image(self, stream: torch.Tensor, s: Session) -> torch.Tensor:
        """The image tokens of this block's stream: all of it, or the tail of a joint ``[text | image]`` one."""
        return image_part(stream, s.x.shape[1]) if self.joint else stream


class _OutputHook(ModelHook):
    """On the model's output module (``reconstruct_at``): a skipped call returns the output rebuilt from the stored
    outputs without running the module; a computed call's output is stored."""

    def __init__(self, session: Session):
        super().__init__()
        self.session = session

    def new_forward(self, module, *args, **kwargs):
        s = self.session
        if s.active and s.skipping:
            out = s.engine.skipped_output()
            if out is not None:
                return out
            return self.fn_ref.original_forward(*args, **kwargs)
        out = self.fn_ref.original_forward(*args, **kwargs)
        if s.active and s.x is not None:
            s.engine.computed_output(out)
        return out


def session_of(model: torch.nn.Module) -> Optional[Session]:
    return model.__dict__.get(SESSION_ATTR)
