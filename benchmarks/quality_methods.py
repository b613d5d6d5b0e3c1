"""The caches the quality benchmark compares, each as a :class:`Method` that hooks into a pipeline.

Every method is enabled on a fresh copy of the transformer (the benchmark never relies on a
cache's ``disable`` to restore the model), runs through the real diffusers pipeline, and is
disabled afterwards. A method that cannot run on a model raises :class:`Unsupported` from
``enable`` with the reason (the benchmark writes it as a row instead of crashing); one that runs
but, by its own account, cached nothing reports it from ``check``.

Settings per model and step count are tables below (``SETTINGS``): each family gets 1–3 settings
chosen to span roughly 1.5–3× fewer block evaluations on the shipped models (the "preset + one option"
families five δ values around 2×); the preset (family DiCache) 24–29 thresholds, to span the budget mode's
targets (1.5–3×) so that each budget run has fixed-δ runs around it, with no gap much wider than 2^(1/4) in δ from
0.1 to 1.2 (:func:`denser`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

import diffusers

import dicache
import dicache.adapters
import dicache.config
from dicache import zoo
from dicache.api import _flow_sigmas
from dicache.config import REACH_MIN_STEPS, STEPS_GAMMA_MIN_STEPS

from uniform_cache import enable_uniform

os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # cache-dit logs every enable/summary at INFO

# Families, in table/plot order.
NO_CACHE = "no cache"
UNIFORM = "uniform"
FBC = "FirstBlockCache"
TAYLORSEER = "TaylorSeer"
TAYLORSEER_LITE = "TaylorSeer-Lite"
MAGCACHE = "MagCache"
SEACACHE = "SeaCache"
DBCACHE = "cache-dit DBCache"
DICACHE = "DiCache"  # dicache.enable(pipe, threshold=δ): the preset of the model family
DICACHE_PAPER = "DiCache paper"  # the authors' settings (dicache.PAPER_PRESETS)
DICACHE_BUDGET = "DiCache budget"  # preset + target_speedup: no δ; after one call on the calibration seed (replay rule)
DICACHE_BUDGET_ONLINE = "DiCache budget online"  # the same with every call a first call (the online rule)
DICACHE_ORDER2 = "DiCache order 2"  # preset + alignment_order=2
DICACHE_ORDER1 = "DiCache order 1"  # preset + alignment_order=1 (the method's line; the preset bends it: "auto")
# the preset's gamma_source="auto" takes γ from the step distance from STEPS_GAMMA_MIN_STEPS (25) steps on, from
# the probe below: each family is the other choice where the preset makes one (run at 20 steps, resp. 50)
DICACHE_STEPS = "DiCache steps γ"  # preset + gamma_source="steps"
DICACHE_PROBE = "DiCache probe γ"  # preset + gamma_source="probe"
# the preset's plan_runs="auto" plans runs of unprobed skips where γ comes from the steps (50 steps here): this
# family probes every call there (and drops the planned runs' max_extrapolation)
DICACHE_PROBED = "DiCache every call probed"  # preset + plan_runs=False, max_extrapolation=None
# planned runs keep each reuse within one spacing of the two newest entries past the newest (max_extrapolation="auto"
# = 1), which bounds how fast runs grow: these two loosen it
DICACHE_REACH2 = "DiCache reach 2"  # preset + max_extrapolation=2
DICACHE_NOREACH = "DiCache no reach"  # preset + max_extrapolation=None
# below REACH_MIN_STEPS (45) the preset's planned runs are unbounded: this family bounds them as at 50 steps (the
# preset there before the twenty-first round)
DICACHE_REACH1 = "DiCache reach 1"  # preset + max_extrapolation=1
DICACHE_SEPARATE = "DiCache separate CFG"  # preset + cfg_decision="separate"
DICACHE_CAP2 = "DiCache cap 2"  # preset + max_consecutive_reuse=2 (SeaCache's cap; the earlier preset's)
# preset + threshold_end = 2·threshold, monotone_runs=False: a rising δ lengthens the planned runs towards the end on
# purpose, which the bound would undo (with it the Flux 50 settings fell from 2.25× to 1.58× fewer flops)
DICACHE_SCHED = "DiCache δ schedule"
# preset + force_last_step=0.1: the last tenth of the steps computed (2 at 20 steps, 3 at 30, 5 at 50) where the
# preset computes the last 4% (1, 2, 2): a skip of the second-to-last step costs the most of any single skip
DICACHE_LAST10 = "DiCache last 10%"
# preset + plan_error="steps": planned runs predict their error from the count of steps ahead, not the step sizes
# (the earlier preset's rule; where runs are planned: 30 and 50 steps here)
DICACHE_STEP_RUNS = "DiCache step runs"
# preset + batch_policy="max": each sample of the batch measures its own error and γ, and the batch reuses only when
# every sample is under δ (the preset pools the batch: one error, one γ)
DICACHE_PER_SAMPLE = "DiCache per sample"
DICACHE_NOALIGN = "DiCache γ=1"  # preset + gamma_clip=(1, 1), γ from the probe: no trajectory alignment
DICACHE_M2 = "DiCache m=2"
DICACHE_M3 = "DiCache m=3"
DICACHE_NO_PREDICTIVE = "DiCache no predictive"  # preset + predictive_skip=False (the preset skips probes by prediction)
DICACHE_NORUN = "DiCache run_power=0"  # preset + run_power=0 + cap 2: every reuse of a run under δ (the earlier rule)
# preset + quad_reach=True (blend 0): the line for a call past the reach of the quadratic through close entries
# (where γ comes from the steps: 25 steps and more on flow matching, every step count on a DDPM-family trajectory)
DICACHE_QUAD_REACH = "DiCache quad reach"
# preset + quad_reach="spaced" (blend 0): the same, but the quadratic kept through entries whose two oldest are
# neighbouring steps (the first run after the warm-up): the line only for runs that lengthen
DICACHE_QUAD_SPACED = "DiCache quad reach spaced"
# preset + quad_reach="spaced" + quad_reach_blend=0.5: beyond the reach half the quadratic's correction, not the line
# (the presets' own since the fifty-fourth round: measured as a family before they took it)
DICACHE_QUAD_HALF = "DiCache quad reach half"
PEERS = (UNIFORM, FBC, TAYLORSEER, TAYLORSEER_LITE, MAGCACHE, SEACACHE, DBCACHE)
DICACHES = (DICACHE, DICACHE_PAPER, DICACHE_BUDGET, DICACHE_BUDGET_ONLINE, DICACHE_ORDER1, DICACHE_ORDER2,
            DICACHE_STEPS, DICACHE_PROBE, DICACHE_PROBED, DICACHE_REACH1, DICACHE_REACH2, DICACHE_NOREACH,
            DICACHE_SEPARATE, DICACHE_CAP2, DICACHE_SCHED, DICACHE_LAST10, DICACHE_STEP_RUNS, DICACHE_PER_SAMPLE, DICACHE_NOALIGN, DICACHE_M2, DICACHE_M3, DICACHE_NO_PREDICTIVE,
            DICACHE_NORUN, DICACHE_QUAD_REACH, DICACHE_QUAD_SPACED, DICACHE_QUAD_HALF)
FAMILIES = (NO_CACHE,) + PEERS + DICACHES


class Unsupported(Exception):
    """The method cannot run on this model/pipeline; the message says why."""


@dataclass
class Context:
    """What a method may need to know about the run it is enabled for."""

    model: str
    steps: int
    backend: str
    calibrate_mag: Callable[[], List[float]]  # MagCache ratios for this model and step count (cached)
    # the keyword arguments of a pipeline call on the calibration seed, with a generator of their own at each call
    calibration_kwargs: Optional[Callable[[], Dict[str, Any]]] = None


@dataclass
class Method:
    family: str
    setting: str
    enable: Callable[[Any, Context], None]
    disable: Callable[[Any], None]
    check: Optional[Callable[[Any, Context, List[str]], Optional[str]]] = None  # (pipe, ctx, warnings) -> note
    params: Dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# settings: (model, steps) -> family -> list of parameters
# ---------------------------------------------------------------------------

# Chosen with sweeps on the shipped models (1 seed, 10 labels): each list spans ~1.3–3× fewer flops where
# the method gets there at all. The preset's own list also fills the gap around 1.5× (the budget's lowest
# target, compared with the fixed δ there): Flux 20 0.07, Flux 50 0.033–0.037, Wan 20 0.08, Wan 50 0.03.
# DiCache's own families sit around its preset (δ=0.3 Flux, 0.16 Wan, when they were set);
# "run_power=0" sits around the earlier preset (δ=0.2 Flux, 0.12 Wan, cap 2).
# Step counts not listed use the nearest one.
_PEERS_FLUX20 = {UNIFORM: [2, 3], FBC: [0.2, 0.3, 0.4], TAYLORSEER: [("default", 3)], TAYLORSEER_LITE: [2, 3, 4],
                 MAGCACHE: [0.1, 0.25, 0.4], SEACACHE: [0.25], DBCACHE: [0.2, 0.4, 0.6]}
_PEERS_FLUX50 = {UNIFORM: [2, 3], FBC: [0.1, 0.2, 0.3], TAYLORSEER: [("default", 3)], TAYLORSEER_LITE: [2, 3, 4],
                 MAGCACHE: [0.03, 0.06, 0.15], SEACACHE: [0.25], DBCACHE: [0.1, 0.2, 0.4]}
_PEERS_WAN20 = {UNIFORM: [2, 3], FBC: [0.1, 0.15, 0.3], TAYLORSEER: [("default", 3), ("attn", 3)], TAYLORSEER_LITE: [2, 3, 4],
                MAGCACHE: [0.06, 0.15, 0.4], SEACACHE: [0.25, 0.5, 1.0], DBCACHE: [0.1, 0.2, 0.3]}
_PEERS_WAN50 = {UNIFORM: [2, 3], FBC: [0.05, 0.1, 0.15], TAYLORSEER: [("default", 3), ("attn", 3)], TAYLORSEER_LITE: [2, 3, 4],
                MAGCACHE: [0.03, 0.06, 0.15], SEACACHE: [0.1, 0.25, 1.0], DBCACHE: [0.05, 0.1, 0.2]}
# hunyuan_digits, the held-out model (trained after every preset setting was chosen): the lists span the same
# savings, read off one scouting run on seed 10, a seed no report uses. SeaCache needs step_index and sigma in
# cache_context, which HunyuanVideoPipeline does not pass: it fails open there (one setting shows it).
_PEERS_HY20 = {UNIFORM: [2, 3], FBC: [0.1, 0.15, 0.2, 0.3, 0.4], TAYLORSEER: [("default", 3)],
               TAYLORSEER_LITE: [2, 3, 4], MAGCACHE: [0.06, 0.1, 0.15, 0.25], SEACACHE: [0.25],
               DBCACHE: [0.2, 0.4, 0.6, 0.8, 1.0]}
_PEERS_HY50 = {UNIFORM: [2, 3], FBC: [0.05, 0.1, 0.15, 0.2, 0.3], TAYLORSEER: [("default", 3)],
               TAYLORSEER_LITE: [2, 3, 4], MAGCACHE: [0.03, 0.06, 0.1, 0.15, 0.4], SEACACHE: [0.25],
               DBCACHE: [0.1, 0.2, 0.4, 0.6, 0.8, 1.0]}
_BUDGETS = [1.5, 2.0, 2.5, 3.0]
# The preset's options with one more change ("preset + X") get the preset's δ values around 2× (5 each), so that
# every such family has measured points on both sides of 2× and the matched comparisons interpolate over short
# spans. The families whose δ means something else (m, γ=1, run_power=0, δ schedule) keep their own.
_NEAR2 = {("flux_digits", 20): [0.15, 0.2, 0.3, 0.4, 0.6], ("flux_digits", 50): [0.1, 0.15, 0.2, 0.3, 0.45],
          ("wan_digits", 20): [0.12, 0.16, 0.2, 0.3, 0.45], ("wan_digits", 50): [0.08, 0.12, 0.16, 0.2, 0.24],
          ("hunyuan_digits", 20): [0.1, 0.15, 0.2, 0.3, 0.45], ("hunyuan_digits", 50): [0.07, 0.1, 0.15, 0.2, 0.3]}
_PRESET_PLUS = (DICACHE_ORDER1, DICACHE_ORDER2, DICACHE_SEPARATE, DICACHE_CAP2, DICACHE_NO_PREDICTIVE)
SETTINGS: Dict[str, Dict[int, Dict[str, list]]] = {
    "flux_digits": {
        20: {**_PEERS_FLUX20, DICACHE: [0.05, 0.06, 0.07, 0.08, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5], DICACHE_PAPER: [0.1, 0.2, 0.4, 0.6],
             DICACHE_BUDGET: _BUDGETS, DICACHE_BUDGET_ONLINE: _BUDGETS, DICACHE_SCHED: [0.15, 0.2],
             DICACHE_NOALIGN: [0.3, 0.6], DICACHE_M2: [0.3, 0.6], DICACHE_M3: [0.3, 0.6],
             DICACHE_NORUN: [0.1, 0.15, 0.2, 0.3]},
        50: {**_PEERS_FLUX50, DICACHE: [0.03, 0.033, 0.035, 0.037, 0.04, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.45, 0.6, 0.9, 1.2, 2.4, 4.8], DICACHE_PAPER: [0.05, 0.1, 0.2, 0.4],
             DICACHE_BUDGET: _BUDGETS, DICACHE_BUDGET_ONLINE: _BUDGETS, DICACHE_SCHED: [0.1, 0.15],
             DICACHE_NOALIGN: [0.2, 0.45], DICACHE_M2: [0.2, 0.45], DICACHE_M3: [0.2, 0.45],
             DICACHE_NORUN: [0.05, 0.075, 0.1, 0.2]},
    },
    "wan_digits": {
        20: {**_PEERS_WAN20, DICACHE: [0.06, 0.08, 0.1, 0.12, 0.16, 0.2, 0.3, 0.45, 0.7, 1.0, 1.5],
             DICACHE_PAPER: [0.08, 0.12, 0.16, 0.24], DICACHE_BUDGET: _BUDGETS, DICACHE_BUDGET_ONLINE: _BUDGETS,
             DICACHE_SCHED: [0.1, 0.16], DICACHE_NOALIGN: [0.16, 0.3], DICACHE_M2: [0.16, 0.3], DICACHE_M3: [0.16, 0.3],
             DICACHE_NORUN: [0.08, 0.12, 0.16, 0.24]},
        50: {**_PEERS_WAN50, DICACHE: [0.02, 0.03, 0.04, 0.08, 0.16, 0.24, 0.3, 0.4, 0.45, 0.6, 0.9, 1.2, 2.4],
             DICACHE_PAPER: [0.04, 0.08, 0.12, 0.24], DICACHE_BUDGET: _BUDGETS, DICACHE_BUDGET_ONLINE: _BUDGETS,
             DICACHE_SCHED: [0.08, 0.12], DICACHE_NOALIGN: [0.16, 0.24], DICACHE_M2: [0.16, 0.24],
             DICACHE_M3: [0.16, 0.24], DICACHE_NORUN: [0.04, 0.08, 0.12, 0.16]},
    },
}
_HY_DELTAS = {20: [0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.45, 0.55, 0.7, 1.0, 1.5, 2.4],
              50: [0.02, 0.025, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.45, 0.7, 1.0, 1.5, 2.4, 4.8]}
SETTINGS["hunyuan_digits"] = {
    st: {**peers, DICACHE: list(_HY_DELTAS[st]), DICACHE_PAPER: [0.05, 0.1, 0.2, 0.4], DICACHE_BUDGET: _BUDGETS,
         DICACHE_BUDGET_ONLINE: _BUDGETS, DICACHE_SCHED: [0.1, 0.15], DICACHE_NOALIGN: [0.2, 0.45],
         DICACHE_M2: [0.2, 0.45], DICACHE_M3: [0.2, 0.45], DICACHE_NORUN: [0.05, 0.1, 0.15, 0.2]}
    for st, peers in ((20, _PEERS_HY20), (50, _PEERS_HY50))
}
# sd3_digits, a second held-out model (trained in the twenty-fifth round; nothing at 20 steps or more was chosen on
# it) and the only zoo model of a family without a preset: its DiCache families run the generic rule (dicache.config.GENERIC)
# at their δ, and `dicache.enable(pipe)` budgets 2× there. Lists read off a scouting run on seed 10, as above (the
# peers'; DiCache's are the held-out HunyuanVideo model's, which span 1.2–3.8× there too).
# FirstBlockCache and TaylorSeer-Lite crash on SD3 (they subtract the last block's text stream, which SD3's last
# block does not return): one setting each shows it.
_PEERS_SD3 = {20: {UNIFORM: [2, 3], FBC: [0.2], TAYLORSEER: [("default", 3)], TAYLORSEER_LITE: [3],
                   MAGCACHE: [0.06, 0.1, 0.15, 0.25, 0.4], SEACACHE: [0.25], DBCACHE: [0.2, 0.4, 0.6, 0.8, 1.0]},
              50: {UNIFORM: [2, 3], FBC: [0.2], TAYLORSEER: [("default", 3)], TAYLORSEER_LITE: [3],
                   MAGCACHE: [0.03, 0.06, 0.1, 0.15, 0.4], SEACACHE: [0.25], DBCACHE: [0.1, 0.2, 0.4, 0.6, 0.8, 1.0]}}
_NEAR2[("sd3_digits", 20)] = [0.1, 0.15, 0.2, 0.3, 0.45]
_NEAR2[("sd3_digits", 50)] = [0.07, 0.1, 0.15, 0.2, 0.3]
# cogvideox_digits, a third held-out model (trained in the twenty-sixth round, after every setting of the generic
# rule and its budget was chosen), a family without a preset and the only zoo model that is not flow matching
# (DDIM, v-prediction): its scheduler has no sigmas, so the budget's first call predicts the errors to come from
# the errors it measured. The peers' lists read off a scouting run on seed 10, as above (TaylorSeer's default
# patterns match none of its modules, CogVideoX's attention is transformer_blocks.N.attn1: the "attn" patterns
# too, as on Wan; SeaCache fails open, the pipeline passing no step or sigma); DiCache's lists are the held-out
# HunyuanVideo model's.
_PEERS_COGVIDEOX = {20: {UNIFORM: [2, 3], FBC: [0.1, 0.15, 0.2, 0.3, 0.4], TAYLORSEER: [("default", 3), ("attn", 3)],
                         TAYLORSEER_LITE: [2, 3, 4], MAGCACHE: [0.1, 0.15, 0.25, 0.4, 0.6], SEACACHE: [0.25],
                         DBCACHE: [0.1, 0.2, 0.4, 0.6, 0.8, 1.0]},
                    50: {UNIFORM: [2, 3], FBC: [0.05, 0.1, 0.15, 0.2, 0.3], TAYLORSEER: [("default", 3), ("attn", 3)],
                         TAYLORSEER_LITE: [2, 3, 4], MAGCACHE: [0.03, 0.06, 0.1, 0.15, 0.25], SEACACHE: [0.25],
                         DBCACHE: [0.05, 0.1, 0.2, 0.4, 0.6, 0.8]}}
for _m, _peers in (("sd3_digits", _PEERS_SD3), ("cogvideox_digits", _PEERS_COGVIDEOX)):
    SETTINGS[_m] = {
        st: {**_peers[st], DICACHE: list(_HY_DELTAS[st]), DICACHE_PAPER: [0.05, 0.1, 0.2, 0.4],
             DICACHE_BUDGET: _BUDGETS, DICACHE_BUDGET_ONLINE: _BUDGETS, DICACHE_SCHED: [0.1, 0.15],
             DICACHE_NOALIGN: [0.2, 0.45], DICACHE_M2: [0.2, 0.45], DICACHE_M3: [0.2, 0.45],
             DICACHE_NORUN: [0.05, 0.1, 0.15, 0.2]}
        for st in (20, 50)
    }
    _NEAR2[(_m, 20)] = [0.1, 0.15, 0.2, 0.3, 0.45]
    _NEAR2[(_m, 50)] = [0.07, 0.1, 0.15, 0.2, 0.3]
for (_m, _st), _deltas in _NEAR2.items():
    SETTINGS[_m][_st].update({fam: list(_deltas) for fam in _PRESET_PLUS})
    # the γ source the preset does not take there, over the preset's whole δ range
    _other = DICACHE_STEPS if _st < STEPS_GAMMA_MIN_STEPS else DICACHE_PROBE
    SETTINGS[_m][_st][_other] = list(SETTINGS[_m][_st][DICACHE])
    if _st >= STEPS_GAMMA_MIN_STEPS:  # where the preset plans runs: every call probed instead
        SETTINGS[_m][_st][DICACHE_PROBED] = sorted(set(_deltas) | {0.45, 0.7})
        # the looser reach from 2× on (below, the runs are short and the reach does not bind)
        for _fam in (DICACHE_REACH2, DICACHE_NOREACH):
            SETTINGS[_m][_st][_fam] = [d for d in SETTINGS[_m][_st][DICACHE] if d >= 0.2]
        # the same calls as the preset there: planned runs replace predictive skips, and with γ from the steps
        # alignment_order="auto" takes the quadratic whole
        for _same in (DICACHE_NO_PREDICTIVE, DICACHE_ORDER2):
            del SETTINGS[_m][_st][_same]
    else:  # order 2 against the preset's "auto" blend over the preset's whole δ range (the 20-step preset's rival)
        SETTINGS[_m][_st][DICACHE_ORDER2] = list(SETTINGS[_m][_st][DICACHE])

# 30 steps (FLUX.1's own default), a step count no preset setting was chosen on: the peers keep their 20-step
# lists; the preset plans its runs there (as at 50 steps), where its 20-step δ list saves less than 3×, so the list
# goes on to δ = 4.8; "probe γ" is the 20-step preset's way there (every call probed, γ from the probe), on the
# same δ. The families that make the preset's calls where runs are planned are left out, as at 50 steps.
for _m in SETTINGS:
    _t = {fam: list(v) for fam, v in SETTINGS[_m][20].items()}
    _t[DICACHE] = sorted(set(_t[DICACHE]) | {2.4, 4.8})
    _t.update({fam: list(_t[DICACHE]) for fam in (DICACHE_PROBE, DICACHE_REACH2, DICACHE_NOREACH)})
    if 30 < REACH_MIN_STEPS:  # the preset's runs are unbounded there: "no reach" would be the preset; bound them instead
        _t[DICACHE_REACH1] = _t.pop(DICACHE_NOREACH)
    for _same in (DICACHE_STEPS, DICACHE_NO_PREDICTIVE, DICACHE_ORDER2):
        _t.pop(_same, None)
    SETTINGS[_m][30] = _t


def denser(deltas: Sequence[float], lo: float = 0.1, hi: float = 1.2, ratio: float = 2 ** 0.25) -> List[float]:
    """``deltas`` with every gap wider than ``ratio`` that reaches into [``lo``, ``hi``] filled with evenly spaced
    values (in log scale, two significant digits) so that no gap there is wider than ``ratio``."""
    ds = sorted(deltas)
    out = set(ds)
    for a, b in zip(ds, ds[1:]):
        if b > lo and a < hi and b / a > ratio * (1 + 1e-9):
            parts = math.ceil(math.log(b / a) / math.log(ratio))
            out.update(float(f"{a * (b / a) ** (j / parts):.2g}") for j in range(1, parts))
    return sorted(out)


# The preset's PSNR over all samples is jagged in δ: at Wan 50, seeds 0–3, δ = 0.12 saves 1.85× at 48.5 dB and
# δ = 0.14 2.07× at 53.0 (the mean of the samples' PSNR 57.4 and 54.7: three of the first's 40 samples fall under
# 45 dB; benchmarks/RESULTS.md, fifteenth round). A list with gaps of 2× in δ reads that curve between two far
# points: at every step count the preset's list has no gap much wider than 2^(1/4) from δ = 0.1 to 1.2 (about 2× to
# 3× fewer flops on every model), to 2.4 where runs are planned (their error read on the step sizes ahead,
# ``plan_error="step_sizes"``, the runs are shorter at the same δ: 3× takes δ = 1.1 to 1.5 at 50 steps). The
# families that copy it above keep the sparser list.
for _m in SETTINGS:
    for _st in SETTINGS[_m]:
        _planned = _st >= STEPS_GAMMA_MIN_STEPS
        SETTINGS[_m][_st][DICACHE] = denser(SETTINGS[_m][_st][DICACHE], hi=2.4 if _planned else 1.2)
        # the preset's list from δ = 0.1 on (about 1.7× fewer flops and more on every model)
        _from_01 = [d for d in SETTINGS[_m][_st][DICACHE] if d >= 0.1]
        SETTINGS[_m][_st][DICACHE_LAST10] = list(_from_01)
        SETTINGS[_m][_st][DICACHE_PER_SAMPLE] = list(_from_01)
        # over 2–3× fewer flops on every model (δ 0.1 to 2.4), where the quadratic is taken whole
        if _planned or not _flow_sigmas(zoo.make_scheduler(_m)):
            SETTINGS[_m][_st][DICACHE_QUAD_REACH] = [d for d in _from_01 if d <= 2.4]
            for _f in (DICACHE_QUAD_SPACED, DICACHE_QUAD_HALF):
                SETTINGS[_m][_st][_f] = list(SETTINGS[_m][_st][DICACHE_QUAD_REACH])
        if _planned:  # where runs are planned
            SETTINGS[_m][_st][DICACHE_STEP_RUNS] = list(_from_01)
            # the δ schedule's two values, run on runs read on the step sizes, stop short of 2.25× (Flux 50: 2.17×,
            # was 2.37×): two more, 4/3 and 2 times its larger δ, keep the rival on both sides of 2–2.5×
            _s = SETTINGS[_m][_st][DICACHE_SCHED]
            SETTINGS[_m][_st][DICACHE_SCHED] = sorted(set(_s) | {float(f"{k * max(_s):.2g}") for k in (4 / 3, 2)})


def _family_preset(model: str) -> Optional[dicache.DiCacheConfig]:
    """The family preset of a zoo model (None: its family has none)."""
    adapter = dicache.adapters.find_class(getattr(diffusers, zoo.get_spec(model).transformer_class))
    return dicache.PRESETS.get(adapter.family if adapter is not None else "")


def default_threshold(model: str, steps: int, flow_sigmas: Optional[bool] = None) -> float:
    """δ of ``dicache.enable(pipe)`` with no options on a zoo model at ``steps``: its family preset's where that
    preset's runs are planned, its ``probe_threshold`` (where set) where the probe decides each call; a family without
    a preset: the generic rule's δ, which the default decides on where it does not budget (:func:`default_of`).
    ``flow_sigmas``: whether the pipeline samples on flow-matching sigmas (None: as the model's scheduler does)."""
    config = _family_preset(model) or dicache.config.GENERIC
    if flow_sigmas is None:
        flow_sigmas = _flow_sigmas(zoo.make_scheduler(model))
    return config.on_trajectory(steps, flow_sigmas).threshold_at(steps)


def default_of(model: str, steps: int, flow_sigmas: Optional[bool] = None):
    """``dicache.enable(pipe)`` with no options on a zoo model's pipeline at ``steps`` (``flow_sigmas``: as in
    :func:`default_threshold`), as a family of the report and its value: (DICACHE, the preset's δ there), or, for a
    family without a preset, its first call (DICACHE_BUDGET_ONLINE, 2.0)."""
    if _family_preset(model) is not None:
        return DICACHE, default_threshold(model, steps, flow_sigmas)
    return DICACHE_BUDGET_ONLINE, float(dicache.config.GENERIC_BUDGET.target_speedup)


# The default (the preset's own δ there) is a setting of the preset's family at every step count, added after the lists
# are made denser so that no other δ moves: the report reads where ``dicache.enable(pipe)`` sits on the front.
for _m in SETTINGS:
    for _st in SETTINGS[_m]:
        SETTINGS[_m][_st][DICACHE] = sorted(set(SETTINGS[_m][_st][DICACHE]) | {default_threshold(_m, _st)})

# --quick: one setting per family (the smoke test checks every family has a row).
QUICK_FAMILIES = {fam: (lambda s: s[1:2] if len(s) > 1 else s[:1]) for fam in FAMILIES[1:]}
QUICK_FAMILIES[TAYLORSEER] = lambda s: s[:1]
QUICK_FAMILIES[TAYLORSEER_LITE] = lambda s: s[:1]
QUICK_FAMILIES[SEACACHE] = lambda s: s[:1]


def settings_for(model: str, steps: int) -> Dict[str, list]:
    table = SETTINGS[model]
    nearest = min(table, key=lambda s: abs(s - steps))
    return table[nearest]


# ---------------------------------------------------------------------------
# the methods
# ---------------------------------------------------------------------------


BY_HAND = "applied by hand"  # the note of a diffusers cache run on a transformer without CacheMixin


def _enable_diffusers_cache(pipe, config) -> None:
    """``pipe.transformer.enable_cache(config)``. A transformer without diffusers' ``CacheMixin``
    (``SD3Transformer2DModel`` in diffusers 0.42.1) has no ``enable_cache`` and no ``cache_context``, so none of
    diffusers' caches runs on it; here it gets them the way a CacheMixin model would: the instance takes the mixin
    (``enable_cache`` applies the same hooks, and the pipeline's ``maybe_free_model_hooks`` resets their state after
    each call), and every call runs in one cache context, ``"cond_uncond"`` (SD3's pipeline batches both halves of
    the guidance into one call per step; it tells no step index or sigma, as Flux's and HunyuanVideo's do not)."""
    tr = pipe.transformer
    if not hasattr(tr, "enable_cache"):
        from diffusers.hooks.hooks import CacheContext, _set_cache_context
        from diffusers.models.cache_utils import CacheMixin

        cls = type(tr)
        tr.__class__ = type(cls.__name__, (cls, CacheMixin), {"_by_hand_from": cls})
        tr._by_hand_hook = tr.register_forward_pre_hook(
            lambda module, args: _set_cache_context(module, CacheContext("cond_uncond")))
    tr.enable_cache(config)


def _diffusers_disable(pipe) -> None:
    tr = pipe.transformer
    if getattr(tr, "_cache_config", None) is not None:
        tr.disable_cache()
    if getattr(type(tr), "_by_hand_from", None) is not None:
        tr._by_hand_hook.remove()
        del tr._by_hand_hook
        tr.__class__ = type(tr)._by_hand_from


def _by_hand_check(pipe, ctx, warnings: List[str]) -> Optional[str]:
    """The row's note where :func:`_enable_diffusers_cache` attached the cache by hand (run before ``disable``)."""
    cls = getattr(type(pipe.transformer), "_by_hand_from", None)
    return None if cls is None else f"{BY_HAND}: {cls.__name__} has no enable_cache"


def uniform(every: int) -> Method:
    def enable(pipe, ctx):
        enable_uniform(pipe, every, backend=ctx.backend)

    return Method(UNIFORM, f"k={every} (x + R[-1])", enable, dicache.disable, None, {"k": every})


def first_block_cache(threshold: float) -> Method:
    from diffusers import FirstBlockCacheConfig

    def enable(pipe, ctx):
        _enable_diffusers_cache(pipe, FirstBlockCacheConfig(threshold=threshold))

    return Method(FBC, f"threshold={threshold:g}", enable, _diffusers_disable, _by_hand_check, {"threshold": threshold})


# TaylorSeer's default patterns are "^blocks.*attn" etc. under re.fullmatch: they match Flux's
# "transformer_blocks.N.attn" but never Wan's "blocks.N.attn1"/"attn2". "attn" passes patterns that
# match both ("attn" optionally followed by a digit); "lite" is TaylorSeer-Lite (blocks skipped,
# proj_out predicted).
_TS_ATTN = [r"(transformer_blocks|single_transformer_blocks|blocks)\.\d+\.attn\d?"]


def taylorseer(mode: str, interval: int) -> Method:
    from diffusers import TaylorSeerCacheConfig

    def enable(pipe, ctx):
        kw = dict(cache_interval=interval, disable_cache_before_step=3, max_order=1, taylor_factors_dtype=torch.float32)
        if mode == "attn":
            kw["cache_identifiers"] = _TS_ATTN
        elif mode == "lite":
            kw["use_lite_mode"] = True
        _enable_diffusers_cache(pipe, TaylorSeerCacheConfig(**kw))
        hooked = [
            n for n, m in pipe.transformer.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook("taylorseer_cache")
        ]
        if not hooked:
            _diffusers_disable(pipe)
            raise Unsupported(
                "its default module patterns (re.fullmatch '^blocks.*attn', …) match no module of "
                f"{type(pipe.transformer).__name__} (Wan's are blocks.N.attn1/attn2): nothing would be cached"
            )

    labels = {"default": "attention, default patterns", "attn": "attention, patterns attn\\d?", "lite": "blocks skipped"}
    return Method(
        TAYLORSEER_LITE if mode == "lite" else TAYLORSEER, f"{labels[mode]}, interval={interval}, order 1", enable,
        _diffusers_disable, _by_hand_check,
        {"mode": mode, "interval": interval},
    )


def parse_mag_calibration(text: str) -> List[List[float]]:
    """The ratio lists MagCache prints at the end of a calibration run (one per cache context)."""
    out = []
    for chunk in text.split("Calibration Complete")[1:]:
        m = re.search(r"\[([^\[\]]*)\]", chunk)
        if m:
            out.append([float(v) for v in m.group(1).split(",") if v.strip()])
    return out


def calibrate_mag(pipe, call_kwargs: dict, steps: int) -> List[float]:
    """Run MagCache's own calibration mode once and return the per-step ratios (mean over CFG branches)."""
    from diffusers import MagCacheConfig

    _enable_diffusers_cache(pipe, MagCacheConfig(calibrate=True, num_inference_steps=steps))
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            pipe(**call_kwargs)
    finally:
        _diffusers_disable(pipe)
    lists = [r for r in parse_mag_calibration(buf.getvalue()) if len(r) == steps]
    if not lists:
        raise RuntimeError(f"MagCache calibration printed no ratios of length {steps}: {buf.getvalue()[-500:]!r}")
    return [sum(v) / len(v) for v in zip(*lists)]


def magcache(threshold: float) -> Method:
    from diffusers import MagCacheConfig

    def enable(pipe, ctx):
        ratios = ctx.calibrate_mag()
        _enable_diffusers_cache(
            pipe, MagCacheConfig(
                threshold=threshold, max_skip_steps=3, retention_ratio=0.2, num_inference_steps=ctx.steps,
                mag_ratios=torch.tensor(ratios),
            )
        )

    return Method(
        MAGCACHE, f"threshold={threshold:g}, K=3, calibrated", enable, _diffusers_disable, _by_hand_check,
        {"threshold": threshold},
    )


def _sea_check(pipe, ctx, warnings: List[str]) -> Optional[str]:
    fail = [w for w in warnings if "fail-open" in w or "running full" in w]
    return ("FAIL-OPEN: " + " | ".join(sorted(set(fail)))) if fail else _by_hand_check(pipe, ctx, warnings)


def seacache(threshold: float) -> Method:
    from diffusers import SeaCacheConfig

    def enable(pipe, ctx):
        _enable_diffusers_cache(pipe, SeaCacheConfig(threshold=threshold))

    return Method(SEACACHE, f"threshold={threshold:g}", enable, _diffusers_disable, _sea_check, {"threshold": threshold})


def dbcache(threshold: float) -> Method:
    def enable(pipe, ctx):
        try:
            import cache_dit
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise Unsupported(f"cache-dit is not installed ({e}); pip install cache-dit") from None
        cfg = cache_dit.DBCacheConfig(
            Fn_compute_blocks=1,  # its default (8) asserts on these 6–8-block models
            Bn_compute_blocks=0,
            residual_diff_threshold=threshold,
            max_warmup_steps=max(1, math.ceil(0.2 * ctx.steps)),
            num_inference_steps=ctx.steps,
            # The Flux, Wan and HunyuanVideo zoo pipelines run CFG as two transformer calls per step (Flux:
            # true CFG); cache-dit assumes FluxPipeline does one, and would then compare cond with uncond. SD3's
            # pipeline batches both into one call.
            enable_separate_cfg=not zoo.get_spec(ctx.model).cfg_batched,
        )
        with contextlib.redirect_stdout(io.StringIO()):
            cache_dit.enable_cache(pipe, cache_config=cfg)

    def disable(pipe):
        import cache_dit

        cache_dit.disable_cache(pipe)

    return Method(DBCACHE, f"F1B0, threshold={threshold:g}", enable, disable, None, {"threshold": threshold})


def _first_call_engine(config, num_blocks, backend):
    """A DiCache engine whose compute budget keeps no profile: every call is a first call (online rule)."""
    from dicache.engine import DiCacheEngine

    class FirstCallEngine(DiCacheEngine):
        replay_budget = False

    return FirstCallEngine(config, num_blocks, backend)


def dicache_method(family: str, value: float) -> Method:
    """DiCache on top of the model family's preset (``DICACHE_PAPER``: of the authors' settings)."""
    opts: Dict[str, Any] = {"threshold": value}
    if family == DICACHE_NOALIGN:
        opts["gamma_clip"] = (1.0, 1.0)
        opts["gamma_source"] = "probe"  # the clip bounds the probe's γ only
    elif family == DICACHE_M2:
        opts["probe_depth"] = 2
    elif family == DICACHE_M3:
        opts["probe_depth"] = 3
    elif family == DICACHE_ORDER2:
        opts["alignment_order"] = 2
    elif family == DICACHE_ORDER1:
        opts["alignment_order"] = 1
    elif family == DICACHE_STEPS:
        opts["gamma_source"] = "steps"
    elif family == DICACHE_PROBE:
        opts["gamma_source"] = "probe"
    elif family == DICACHE_PROBED:
        opts["plan_runs"] = False
        opts["max_extrapolation"] = None
    elif family == DICACHE_REACH1:
        opts["max_extrapolation"] = 1.0
    elif family == DICACHE_REACH2:
        opts["max_extrapolation"] = 2.0
    elif family == DICACHE_NOREACH:
        opts["max_extrapolation"] = None
    elif family == DICACHE_SEPARATE:
        opts["cfg_decision"] = "separate"
    elif family == DICACHE_CAP2:
        opts["max_consecutive_reuse"] = 2
    elif family == DICACHE_SCHED:
        opts["threshold_end"] = 2 * value
        opts["monotone_runs"] = False
    elif family == DICACHE_LAST10:
        opts["force_last_step"] = 0.1
    elif family == DICACHE_STEP_RUNS:
        opts["plan_error"] = "steps"
    elif family == DICACHE_PER_SAMPLE:
        opts["batch_policy"] = "max"
    elif family == DICACHE_QUAD_REACH:
        opts["quad_reach"], opts["quad_reach_blend"] = True, 0.0
    elif family == DICACHE_QUAD_SPACED:
        opts["quad_reach"], opts["quad_reach_blend"] = "spaced", 0.0
    elif family == DICACHE_QUAD_HALF:
        opts["quad_reach"], opts["quad_reach_blend"] = "spaced", 0.5
    elif family == DICACHE_NO_PREDICTIVE:
        opts["predictive_skip"] = False
    elif family == DICACHE_NORUN:
        opts["run_power"] = 0.0
        opts["max_consecutive_reuse"] = 2
    elif family in (DICACHE_BUDGET, DICACHE_BUDGET_ONLINE):
        opts = {"target_speedup": value}

    def enable(pipe, ctx):
        if family == DICACHE_PAPER:
            from dicache import adapters
            from dicache.config import preset

            base = preset(adapters.find(pipe.transformer).family, paper=True)
            dicache.enable(pipe, backend=ctx.backend, config=base.replace(**opts))
        elif family == DICACHE_BUDGET_ONLINE:
            dicache.enable(pipe, backend=ctx.backend, engine_factory=_first_call_engine, **opts)
        else:
            dicache.enable(pipe, backend=ctx.backend, **opts)
        if family == DICACHE_BUDGET:
            # one call on the calibration seed (as MagCache's calibration): the counted calls replay its profile
            if not ctx.calibration_kwargs:
                raise Unsupported("the budget's calibration call needs Context.calibration_kwargs")
            pipe(**ctx.calibration_kwargs())

    text = ", ".join(f"{k}={v}" for k, v in opts.items()).replace("threshold_end", "δ_end").replace(
        "threshold", "δ").replace("gamma_clip", "γ")
    if family == DICACHE_BUDGET:
        text = f"target_speedup={value:g} (no δ), after one call"
    elif family == DICACHE_BUDGET_ONLINE:
        text = f"target_speedup={value:g} (no δ), every call a first call"
    return Method(family, text, enable, dicache.disable, None, opts)


#: Families whose settings are one integer (an interval) and those whose settings are not one number (a study's
#: ``--values`` cannot list them).
_INT_VALUES = (UNIFORM, TAYLORSEER_LITE)
_NOT_NUMBERS = (TAYLORSEER,)


def parse_values(text: str) -> Tuple[str, list]:
    """``FAMILY=v1,v2,…`` (``quality.py --values``): the family and its settings in place of its list (integers for
    the interval families); ValueError naming what is wrong."""
    fam, sep, vals = text.partition("=")
    fam = fam.strip()
    if not sep or fam not in FAMILIES[1:]:
        raise ValueError(f"FAMILY=v1,v2,… with FAMILY among {list(FAMILIES[1:])}, got {text!r}")
    if fam in _NOT_NUMBERS:
        raise ValueError(f"{fam}'s settings are not numbers; its list stays as it is")
    try:
        got = [float(v) for v in vals.split(",") if v.strip()]
    except ValueError:
        got = []
    if not got or not all(math.isfinite(v) and v > 0 for v in got):
        raise ValueError(f"{fam}: positive numbers after '=', got {vals!r}")
    if fam in _INT_VALUES:
        if any(v != int(v) for v in got):
            raise ValueError(f"{fam}: whole intervals, got {vals!r}")
        got = [int(v) for v in got]
    return fam, got


def build_methods(model: str, steps: int, quick: bool = False, families: Optional[Sequence[str]] = None,
                  values: Optional[Dict[str, list]] = None) -> List[Method]:
    """The methods a report runs on ``model`` at ``steps``: each family's settings (``values``: a family's settings
    in place of its list, :func:`parse_values`)."""
    table = dict(settings_for(model, steps), **(values or {}))
    methods: List[Method] = []
    for fam in FAMILIES[1:]:
        if families is not None and fam not in families:
            continue
        values = table.get(fam, [])
        if quick:
            values = QUICK_FAMILIES[fam](values)
        for v in values:
            if fam == UNIFORM:
                methods.append(uniform(v))
            elif fam == FBC:
                methods.append(first_block_cache(v))
            elif fam == TAYLORSEER:
                methods.append(taylorseer(*v))
            elif fam == TAYLORSEER_LITE:
                methods.append(taylorseer("lite", v))
            elif fam == MAGCACHE:
                methods.append(magcache(v))
            elif fam == SEACACHE:
                methods.append(seacache(v))
            elif fam == DBCACHE:
                methods.append(dbcache(v))
            else:
                methods.append(dicache_method(fam, v))
    return methods


class WarningCapture(logging.Handler):
    """Collects the warnings diffusers' cache hooks log (SeaCache's fail-open, MagCache's mismatches)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @contextlib.contextmanager
    def capturing(self):
        log = logging.getLogger("diffusers.hooks")
        old_level, old_prop = log.level, log.propagate
        log.setLevel(logging.WARNING)
        log.propagate = False
        log.addHandler(self)
        self.messages = []
        try:
            yield self
        finally:
            log.removeHandler(self)
            log.setLevel(old_level)
            log.propagate = old_prop
