"""Counting the block work a cache actually executed, the same way for every cache.

A cache that skips a block usually still *calls* it (diffusers' hooks and dicache replace the block's
``forward``, so ``block(...)`` runs and returns cached tensors), and TaylorSeer skips only parts of a
block (its attention modules). So a forward hook on the block itself would count a skipped block as
evaluated. Instead every ``nn.Linear`` inside the transformer's blocks gets a forward hook that adds
its multiply-accumulates (``rows × in × out``) to its block's tally: a linear layer only runs when the
block's own code really runs. From the tallies:

* ``block_fraction`` — block evaluations executed, as a fraction of the uncached run's: the mean
  over blocks of (work executed in block b / uncached work of block b). A fully computed block call
  counts 1, a skipped one 0, a partly computed one (TaylorSeer's predicted attention) its share.
  For whole-block caches this is exactly "blocks run / blocks of the uncached model".
* ``mac_fraction`` — the same weighted by each block's cost (linear-layer MACs of all blocks).
* ``call_pattern()`` — what each model call ran, in call order: ``F`` every block, ``.`` a part of them (a
  probe, a first block, TaylorSeer's predicted attention), ``_`` none. It shows where any cache computed,
  peers included (a pipeline with separate CFG calls interleaves its branches' calls).

The attention products themselves (``softmax(QKᵀ)V``) are not counted; at the zoo's 64–128 tokens
per sample they are a few percent of a block.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks")


def block_modules(model: torch.nn.Module) -> List[Tuple[str, torch.nn.Module]]:
    """``(name, block)`` for the model's block lists, in execution order (Flux: double then single)."""
    out = []
    for attr in BLOCK_LISTS:
        blocks = getattr(model, attr, None)
        if isinstance(blocks, torch.nn.ModuleList):
            out.extend((f"{attr}.{i}", b) for i, b in enumerate(blocks))
    return out


class BlockCounter:
    """Forward hooks on every ``nn.Linear`` of the blocks, and a call counter on the model."""

    def __init__(self, model: torch.nn.Module):
        self.names = [n for n, _ in block_modules(model)]
        if not self.names:
            raise ValueError(f"{type(model).__name__} has no block list among {BLOCK_LISTS}")
        self.macs = [0] * len(self.names)
        self.calls = 0
        self._starts: List[int] = []  # the total MACs counted when each model call began
        self._handles = []
        for i, (_, block) in enumerate(block_modules(model)):
            for mod in block.modules():
                if isinstance(mod, torch.nn.Linear):
                    self._handles.append(mod.register_forward_hook(self._make_hook(i, mod)))
        self._handles.append(model.register_forward_pre_hook(self._count_call))

    def _make_hook(self, index: int, mod: torch.nn.Linear):
        per_row = mod.in_features * mod.out_features

        def hook(_m, inputs, _out):
            x = inputs[0]
            self.macs[index] += (x.numel() // mod.in_features) * per_row

        return hook

    def _count_call(self, _m, _args):
        self.calls += 1
        self._starts.append(sum(self.macs))

    def reset(self) -> None:
        self.macs = [0] * len(self.names)
        self.calls = 0
        self._starts = []

    def call_pattern(self) -> str:
        """One character per model call since the last reset: ``F`` where its blocks ran at least 99 % of the
        most any call ran, ``_`` where none ran, ``.`` in between."""
        ends = self._starts[1:] + [sum(self.macs)]
        per_call = [e - b for b, e in zip(self._starts, ends)]
        most = max(per_call, default=0)
        return "".join("_" if m == 0 else "F" if m >= 0.99 * most else "." for m in per_call)

    def snapshot(self) -> Dict[str, object]:
        return {"macs": list(self.macs), "calls": self.calls}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def fractions(macs: Sequence[int], reference: Sequence[int]) -> Tuple[float, float]:
    """``(block_fraction, mac_fraction)`` of a run against the uncached run's tallies."""
    if len(macs) != len(reference):
        raise ValueError("tallies of different models")
    per_block = [m / r for m, r in zip(macs, reference) if r > 0]
    block_fraction = sum(per_block) / len(per_block) if per_block else float("nan")
    total = sum(reference)
    mac_fraction = sum(macs) / total if total else float("nan")
    return block_fraction, mac_fraction
