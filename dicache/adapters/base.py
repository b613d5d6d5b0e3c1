"""What DiCache needs to know about a DiT: data, no model code.

An :class:`Adapter` names the model's block lists (in execution order), and for
the blocks of each list which arguments carry the image stream and the text
stream and in which order the block returns them. Arguments are found by name
in ``kwargs`` or, when passed positionally, by their position in the block's
``forward`` signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

HIDDEN = "hidden"
ENCODER = "encoder"


@dataclass(frozen=True)
class BlockList:
    """One list of transformer blocks.

    Attributes:
        attr: attribute of the model holding the ``nn.ModuleList``.
        returns: what a block returns, in order: ``("hidden",)`` for a single
            tensor, ``("encoder", "hidden")`` or ``("hidden", "encoder")`` for tuples.
        hidden_arg: name of the block argument carrying image/video tokens.
        encoder_arg: name of the block argument carrying text tokens, or None.
        joint: the ``hidden_arg`` stream of these blocks is the text and image tokens as one sequence, the image
            tokens last (the model concatenates them before this list, as Chroma's and Flux.2's single-stream
            blocks take them); the cache keeps and reconstructs the image tokens, the first list's stream.
    """

    attr: str
    returns: Tuple[str, ...] = (HIDDEN,)
    hidden_arg: str = "hidden_states"
    encoder_arg: Optional[str] = "encoder_hidden_states"
    joint: bool = False

    def __post_init__(self) -> None:
        if HIDDEN not in self.returns or not set(self.returns) <= {HIDDEN, ENCODER}:
            raise ValueError(f"returns must contain 'hidden' and only 'hidden'/'encoder', got {self.returns!r}")
        if ENCODER in self.returns and self.encoder_arg is None:
            raise ValueError("a block list that returns 'encoder' needs encoder_arg")
        if not isinstance(self.joint, bool):
            raise TypeError(f"joint must be a bool, got {type(self.joint).__name__}")


@dataclass(frozen=True)
class Adapter:
    """How DiCache hooks into one model family.

    Attributes:
        family: preset key (``"flux"``, ``"wan"``, ``"hunyuan_video"``) or any name.
        block_lists: the block lists in the order the model runs them. The probe
            is the first ``probe_depth`` blocks of the concatenation; a skip
            covers all the rest.
        timestep_arg: name of the model ``forward`` argument holding the
            timestep (used to detect a new trajectory in bare sampling loops).
        bypass_args: ``forward`` arguments with which the model leaves some of its blocks out (SD3's
            ``skip_layers``, for skip-layer guidance): a call that passes one (not None, not empty) runs
            without the cache and is not recorded.
        output_module: the submodule whose output is the model's output before unpatchifying, run once per call
            after the blocks (``reconstruct_at="output"`` rebuilds it on a skipped call), or None where there is
            none (the blocks' output is rebuilt then).
    """

    family: str
    block_lists: Tuple[BlockList, ...]
    timestep_arg: str = "timestep"
    bypass_args: Tuple[str, ...] = ()
    output_module: Optional[str] = "proj_out"

    def __post_init__(self) -> None:
        if self.output_module is not None and not isinstance(self.output_module, str):
            raise TypeError(f"output_module must be a submodule name or None, got {self.output_module!r}")
        if not isinstance(self.bypass_args, tuple) or not all(isinstance(a, str) for a in self.bypass_args):
            raise TypeError(f"bypass_args must be a tuple of argument names, got {self.bypass_args!r}")


class ArgLocator:
    """Finds a named argument of a callable in ``(args, kwargs)``."""

    def __init__(self, fn: Any, name: str):
        self.name = name
        self.position: Optional[int] = None
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            params = []
        if params and params[0].name == "self":  # an unbound method: args exclude self
            params = params[1:]
        for i, param in enumerate(params):
            if param.name == name and param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                self.position = i
                break

    def get(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if self.name in kwargs:
            return kwargs[self.name]
        if self.position is not None and self.position < len(args):
            return args[self.position]
        return None


def image_of(output: Any, returns: Tuple[str, ...]) -> torch.Tensor:
    """The image-stream tensor of a block's output."""
    if len(returns) == 1:
        return output
    return output[returns.index(HIDDEN)]


def with_image(output: Any, returns: Tuple[str, ...], hidden: torch.Tensor) -> Any:
    """The block output with its image stream replaced."""
    if len(returns) == 1:
        return hidden
    items = list(output)
    items[returns.index(HIDDEN)] = hidden
    return type(output)(items) if isinstance(output, tuple) else items


def image_part(stream: torch.Tensor, n: int) -> torch.Tensor:
    """The image tokens of a joint ``[text | image]`` stream (``BlockList.joint``): its last ``n`` tokens."""
    return stream if stream.shape[1] == n else stream[:, stream.shape[1] - n:]


def with_image_part(stream: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """A joint ``[text | image]`` stream with its image tokens replaced by ``image``."""
    n = image.shape[1]
    return image if stream.shape[1] == n else torch.cat([stream[:, :stream.shape[1] - n], image], dim=1)


def pack(returns: Tuple[str, ...], hidden: torch.Tensor, encoder: Any) -> Any:
    """What a block returns when it hands its inputs on unchanged."""
    if len(returns) == 1:
        return hidden
    return tuple(hidden if r == HIDDEN else encoder for r in returns)
