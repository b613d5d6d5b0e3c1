"""Training data for the zoo, built from scikit-learn's ``load_digits()``.

scikit-learn ships the 1,797 8×8 digits (16 grey levels) inside the package,
so nothing is downloaded. It is only needed to *train*; loading and sampling
the shipped models does not import it.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def load_digits_tensor() -> Tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(N, 8, 8)`` float32 in [0, 1] and their labels ``(N,)`` int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "training the dicache zoo needs scikit-learn (its load_digits() data ships in the package): "
            "pip install scikit-learn"
        ) from e
    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(d.target, dtype=torch.int64)
    return images, labels


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling of ``(N, h, w)`` images to ``(N, size, size)``, clamped to [0, 1]."""
    out = F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return out[:, 0].clamp_(0.0, 1.0)


def image_dataset(size: int = 16) -> Tuple[torch.Tensor, torch.Tensor]:
    """The digits upsampled to ``size``×``size``: ``(N, size, size)`` in [0, 1], labels ``(N,)``."""
    images, labels = load_digits_tensor()
    return upsample(images, size), labels


def digit_sprites(size: int = 10) -> Tuple[torch.Tensor, torch.Tensor]:
    """The digits upsampled to ``size``×``size`` sprites for the moving-digit clips."""
    return image_dataset(size)


def moving_digit_clips(
    sprites: torch.Tensor,
    num_frames: int,
    frame_size: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Clips ``(B, num_frames, frame_size, frame_size)`` of each sprite moving across a black frame.

    Every clip starts at a random position and moves one pixel per frame in a
    random one of the 8 compass directions, bouncing off the frame's edges.
    """
    b, s, _ = sprites.shape
    span = frame_size - s  # positions 0..span
    pos = torch.randint(0, span + 1, (b, 2), generator=generator)
    dirs = torch.tensor([[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 1], [1, -1], [1, 0], [1, 1]])
    vel = dirs[torch.randint(0, 8, (b,), generator=generator)]
    clips = torch.zeros(b, num_frames, frame_size, frame_size)
    for f in range(num_frames):
        for i in range(b):
            y, x = int(pos[i, 0]), int(pos[i, 1])
            clips[i, f, y : y + s, x : x + s] = sprites[i]
        nxt = pos + vel
        bounce = (nxt < 0) | (nxt > span)
        vel = torch.where(bounce, -vel, vel)
        pos = pos + vel
    return clips
