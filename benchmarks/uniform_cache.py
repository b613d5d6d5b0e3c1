"""Uniform caching as a baseline, through dicache's own hooks: compute every k-th call of a branch.

``UniformEngine`` subclasses :class:`dicache.engine.DiCacheEngine` and only replaces the decision:
call ``i`` of a branch is computed when ``i % k == 0`` (so the first call always is), and every other
call reuses the last computed deep residual, ``h = x + R[-1]`` (DiCache's own ``reuse_one``
reconstruction, no trajectory alignment). Everything else (the block hooks, the probe, the branch
bookkeeping per ``cache_context``, the refresh and the records read by ``dicache.summary``) is
dicache's. The probe blocks still run at every call, as in DiCache: the first ``probe_depth`` blocks
are paid for on skipped calls too, and the benchmark counts them.
"""

from __future__ import annotations

from typing import Optional

import torch

import dicache
from dicache.engine import REUSE_ONE, CallRecord, DiCacheEngine

UNIFORM = "uniform"  # the reason recorded for a computed call


class UniformEngine(DiCacheEngine):
    """DiCache's engine with a fixed schedule: compute call ``i`` of a branch iff ``i % every == 0``."""

    def __init__(self, config, num_blocks: int, backend: str = "auto", every: int = 2):
        super().__init__(config, num_blocks, backend)
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = int(every)

    @torch.no_grad()
    def after_probe(self, x: torch.Tensor, p: torch.Tensor) -> Optional[torch.Tensor]:
        state = self._enter(x)
        if state.n_stored == 0 or self._cur_step % self.every == 0:
            # Compute: after_full() stores R = h - x and P = p - x from this copy of p.
            self._forced = UNIFORM
            state.p_prev.copy_(p)
            state.has_prev = True
            return None
        torch.add(x, state.R[state.newest()], out=state.out)
        return self._skipped(state, CallRecord(self._cur_step, False, REUSE_ONE))


def enable_uniform(pipe, every: int, backend: str = "torch", probe_depth: int = 1):
    """Hook uniform caching into ``pipe`` with dicache's machinery; undo with ``dicache.disable(pipe)``.

    ``dicache.enable`` installs the hooks, the per-branch state and the pipeline link (a new trajectory
    at every pipeline call) and, through its ``engine_factory`` extension point, a
    :class:`UniformEngine` on the same config. No warm-up and no forced last step:
    only the schedule decides.
    """
    dicache.enable(
        pipe, backend=backend, probe_depth=probe_depth, warmup=0, force_last_step=False,
        engine_factory=lambda config, num_blocks, be: UniformEngine(config, num_blocks, be, every=every),
    )
    return pipe
