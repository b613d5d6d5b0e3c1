#!/usr/bin/env python
"""A zoo model trained again without the timestep embedding's fast frequencies: is its residual smooth in the step?

The zoo's models are small and briefly trained. Their output, at a fixed latent, moves with the timestep by as much
within an eighth of a step as over the step (``roughness`` below): the sinusoidal timestep embedding's fast
frequencies (periods down to 2π in timestep units, where a step of 50 is 10–30 units) enter the time MLP through
weights that training has not yet taught to cancel, so along a trajectory the deep residual moves from step to step
as white noise around its trend (``benchmarks/extrapolation_errors.py`` prints it). A large model trained for long
has no reason to keep that. This script trains a zoo model again with the shipped recipe, unchanged but for the
input columns of its timestep MLP (``TimestepEmbedding.linear_1`` under the model's time embedder, not a guidance
embedder) that read a frequency whose period is under ``--min-period`` timestep units: they start at zero and stay
there (their gradients zeroed; AdamW without weight decay then never moves them). The saved model is the same
diffusers class with the same config; ``--weights DIR`` of ``quality.py``, ``extrapolation_errors.py`` and
``run_options.py`` runs it through the real pipeline. It is not shipped.

    .venv/bin/python benchmarks/smooth_time.py train --dir /tmp/smooth/flux_digits --threads 2
    .venv/bin/python benchmarks/smooth_time.py roughness flux_digits --weights /tmp/smooth/flux_digits
    .venv/bin/python benchmarks/smooth_time.py roughness flux_digits                 # the shipped model
    .venv/bin/python benchmarks/extrapolation_errors.py flux_digits 50 FFF_F__F --weights /tmp/smooth/flux_digits
    .venv/bin/python benchmarks/quality.py --models flux_digits --weights /tmp/smooth --out bench_out/smooth

``roughness`` records the inputs of the leading branch's call at one step of an uncached run and evaluates the
model at that latent with the timestep moved across the step in eighths: the relative change of the output per
eighth (first difference) and its second difference. A smooth output changes by about an eighth of the step's
change per eighth and has a second difference far under its first.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from typing import Dict, List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))

import torch  # noqa: E402

#: the time embedders' attribute names in the zoo's classes (Flux, HunyuanVideo, SD3: ``time_text_embed.
#: timestep_embedder``; Wan: ``condition_embedder.time_embedder``; CogVideoX: ``time_embedding``)
TIME_EMBEDDERS = ("timestep_embedder", "time_embedder", "time_embedding")


def fast_columns(half: int, min_period: float, shift: float = 0.0) -> List[int]:
    """The input columns of a sinusoidal timestep embedding of ``2·half`` channels whose frequency has a period under
    ``min_period`` timestep units: frequency ``j`` (``exp(−ln(10000)·j / (half − shift))``, diffusers'
    ``get_timestep_embedding``) sits at columns ``j`` and ``half + j`` whichever half holds the sines."""
    if half < 1 or not min_period > 0:
        raise ValueError(f"half must be >= 1 and min_period > 0, got {half}, {min_period}")
    fast = [j for j in range(half) if 2 * math.pi * math.exp(math.log(10000) * j / (half - shift)) < min_period]
    return fast + [half + j for j in fast]


def time_inputs(model: torch.nn.Module) -> Dict[str, torch.nn.Linear]:
    """The first linear layer of each timestep embedder of ``model`` (guidance embedders left out), by name."""
    from diffusers.models.embeddings import TimestepEmbedding

    found = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, TimestepEmbedding) and leaf in TIME_EMBEDDERS:
            found[f"{name}.linear_1"] = module.linear_1
    if not found:
        raise ValueError(f"{type(model).__name__}: no timestep embedder named one of {TIME_EMBEDDERS}")
    return found


def frequency_shift(model: torch.nn.Module, channels: int) -> float:
    """The ``downscale_freq_shift`` of the model's sinusoidal projections (``Timesteps``) of ``channels`` channels, the
    ones a time embedder of that width reads (0, diffusers' default for these models, where there is none)."""
    from diffusers.models.embeddings import Timesteps

    shifts = {float(m.downscale_freq_shift) for m in model.modules()
              if isinstance(m, Timesteps) and m.num_channels == channels}
    if len(shifts) > 1:
        raise ValueError(f"{type(model).__name__}: projections of {channels} channels disagree on their shift {shifts}")
    return shifts.pop() if shifts else 0.0


def hold_fast_columns_at_zero(model: torch.nn.Module, min_period: float) -> Dict[str, List[int]]:
    """Zero the fast columns of every time embedder's first layer and zero their gradients from then on."""
    held = {}
    for name, linear in time_inputs(model).items():
        cols = fast_columns(linear.in_features // 2, min_period, frequency_shift(model, linear.in_features))
        mask = torch.ones_like(linear.weight)
        mask[:, cols] = 0
        with torch.no_grad():
            linear.weight.mul_(mask)
        linear.weight.register_hook(lambda g, m=mask: g * m)
        held[name] = cols
    return held


@contextlib.contextmanager
def smooth_variant(name: str, min_period: float, held: Optional[Dict[str, List[int]]] = None):
    """While active, the zoo's trainer builds ``name``'s transformer with the fast columns held at zero (the class and
    the config as shipped; ``held`` receives the columns per layer)."""
    import diffusers

    from dicache.zoo import get_spec

    cls_name = get_spec(name).transformer_class
    cls = getattr(diffusers, cls_name)

    def build(*args, **kwargs):
        model = cls(*args, **kwargs)
        cols = hold_fast_columns_at_zero(model, min_period)
        if held is not None:
            held.update(cols)
        return model

    setattr(diffusers, cls_name, build)
    try:
        yield
    finally:
        setattr(diffusers, cls_name, cls)


def roughness(name: str, weights: Optional[str] = None, steps: int = 50, at: int = 25, parts: int = 8) -> dict:
    """At the latent of step ``at`` of an uncached ``steps``-step run (seed 0, labels 0–3), the output as the timestep
    moves to the next step's in ``parts`` even parts: ``first`` / ``second``, the medians of the output's first and
    second differences over the parts against its norm; ``step``, the change over the whole step with the latent held;
    ``latent``, the change from the next step's latent with the timestep held."""
    from dicache import zoo

    if not 0 <= at < steps - 1 or parts < 2:
        raise ValueError(f"at must be in [0, {steps - 2}] and parts >= 2, got {at}, {parts}")
    model = zoo.load(name, path=weights)
    calls: List[tuple] = []

    def keep(module, args, kwargs):
        calls.append((args, {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}))

    hook = model.register_forward_pre_hook(keep, with_kwargs=True)
    with torch.no_grad():
        zoo.sample(name, [0, 1, 2, 3], seed=0, num_inference_steps=steps, transformer=model, path=weights)
    hook.remove()
    per = len(calls) // steps  # calls per step: one per CFG branch where the pipeline calls them apart
    (args, kwargs), (args_next, kwargs_next) = calls[at * per], calls[(at + 1) * per]
    t0, t1 = kwargs["timestep"], kwargs_next["timestep"]

    def output(a, kw, t):
        out = model(*a, **dict(kw, timestep=t))
        return (out[0] if isinstance(out, tuple) else out.sample).double().flatten()

    with torch.no_grad():
        v = [output(args, kwargs, t0 + (t1 - t0) * (i / parts)) for i in range(parts + 1)]
        moved = output(args_next, kwargs_next, t0)
    norm = v[0].norm()
    first = [float((b - a).norm() / norm) for a, b in zip(v, v[1:])]
    second = [float((v[i + 1] - 2 * v[i] + v[i - 1]).norm() / norm) for i in range(1, parts)]
    med = lambda x: float(torch.tensor(x).median())  # noqa: E731
    return dict(first=med(first), second=med(second), step=float((v[-1] - v[0]).norm() / norm),
                latent=float((moved - v[0]).norm() / norm))


def main(argv=None) -> int:
    from dicache import zoo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the model again with the fast time columns held at zero")
    t.add_argument("--model", choices=zoo.NAMES, default="flux_digits")
    t.add_argument("--dir", required=True, help="where to write it (name it after the model for quality.py)")
    t.add_argument("--min-period", type=float, default=200.0,
                   help="timestep units (the models see 0–1000): columns of faster frequencies held at zero")
    t.add_argument("--steps", type=int, help="training steps (default: the shipped recipe)")
    t.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("roughness", help="the output against the timestep at one step's latent")
    r.add_argument("model", choices=zoo.NAMES)
    r.add_argument("--weights", help="a directory written by train (default: the shipped weights)")
    r.add_argument("--steps", type=int, default=50)
    r.add_argument("--at", type=int, default=25)
    r.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.cmd == "train" and not args.min_period > 0:
        ap.error("--min-period must be > 0")
    threads = torch.get_num_threads()
    try:
        if args.cmd == "train":
            from dicache.zoo.train import train

            held: Dict[str, List[int]] = {}
            with smooth_variant(args.model, args.min_period, held):
                info = train(args.model, steps=args.steps, out_dir=args.dir, threads=args.threads, progress=True)
            for layer, cols in held.items():
                print(f"{layer}: {len(cols)} of its input columns held at zero (periods under {args.min_period:g})")
            print(f"final loss {info['final_loss']} in {info['train_seconds']} s; written to {args.dir}")
            return 0
        torch.set_num_threads(args.threads)
        with torch.no_grad():
            rough = roughness(args.model, args.weights, args.steps, args.at)
    finally:
        torch.set_num_threads(threads)
    print(f"{args.model} ({args.weights or 'shipped'}), {args.steps} steps, the latent of step {args.at}: per eighth "
          f"of the step the output moves {rough['first']:.4f} of its norm, second difference {rough['second']:.4f}; "
          f"over the step {rough['step']:.4f} with the latent held, {rough['latent']:.4f} with the timestep held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
