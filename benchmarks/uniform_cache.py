"""Uniform caching as a baseline, through dicache's own hooks: compute every k-th call of a branch.

``UniformEngine`` subclasses :class:`dicache.engine.DiCacheEngine` and only replaces the decision:
call ``i`` of a branch is computed when ``i % k == 0`` (so the first call always is), and every other
call reuses the last computed deep residual, ``h = x + R[-1]`` (DiCache's own ``reuse_one``
reconstruction, no trajectory alignment). Everything else (the block hooks, the probe, the branch
bookkeeping per ``cache_context``, the refresh and the records read by ``dicache.summary``) is
dicache's. The probe blocks still run at every call, as in DiCache: the first ``probe_depth`` blocks
are paid for on skipped calls too, and the benchmark counts them.

With ``anchor="probe"`` the reuse starts from the fresh probe output instead,
``h = p + (R[-1] - P[-1])`` (the residual of the deep blocks only, as FirstBlockCache and
cache-dit's DBCache reuse it), so the probe that was paid for is used.
"""

from __future__ import annotations

from typing import Optional

import torch

import dicache
from dicache.engine import REUSE_ONE, CallRecord, DiCacheEngine

UNIFORM = "uniform"  # the reason recorded for a computed call


class UniformEngine(DiCacheEngine):
    """DiCache's engine with a fixed schedule: compute call ``i`` of a branch iff ``i % every == 0``."""

    def __init__(self, config, num_blocks: int, backend: str = "auto", every: int = 2, anchor: str = "input"):
        super().__init__(config, num_blocks, backend)
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if anchor not in ("input", "probe"):
            raise ValueError(f"anchor must be 'input' or 'probe', got {anchor!r}")
        self.every = int(every)
        self.anchor = anchor

    @torch.no_grad()
    def after_probe(self, x: torch.Tensor, p: torch.Tensor) -> Optional[torch.Tensor]:
        state = self._cur
        if state is None:
            raise RuntimeError("after_probe() called outside a call (begin_call first)")
        self._x = x
        if not state.matches(x):
            state.allocate(x, with_x_prev=False)
        if state.n_stored == 0 or self._cur_step % self.every == 0:
            # Compute: after_full() stores R = h - x and P = p - x from this copy of p.
            self._forced = UNIFORM
            state.p_prev.copy_(p)
            state.has_prev = True
            return None
        newest = state.newest()
        if self.anchor == "input":
            torch.add(x, state.R[newest], out=state.out)
        else:
            torch.sub(state.R[newest], state.P[newest], out=state.out).add_(p)
        state.records.append(CallRecord(self._cur_step, False, REUSE_ONE))
        state.calls += 1
        self._cur = None
        return state.out


def enable_uniform(pipe, every: int, anchor: str = "input", backend: str = "torch", probe_depth: int = 1):
    """Hook uniform caching into ``pipe`` with dicache's machinery; undo with ``dicache.disable(pipe)``.

    ``dicache.enable`` installs the hooks, the per-branch state and the pipeline link (a new trajectory
    at every pipeline call) and, through its ``engine_factory`` extension point, a
    :class:`UniformEngine` on the same config. No warm-up and no forced last step:
    only the schedule decides.
    """
    dicache.enable(
        pipe, backend=backend, probe_depth=probe_depth, warmup=0, force_last_step=False,
        engine_factory=lambda config, num_blocks, be: UniformEngine(config, num_blocks, be, every=every, anchor=anchor),
    )
    return pipe
