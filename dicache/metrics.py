"""Image-quality metrics against a reference output: PSNR (pooled or per sample) and SSIM (images in [0, 1])."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels (``inf`` when identical)."""
    mse = float(((x.double() - ref.double()) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def psnr_per_sample(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> list:
    """PSNR in dB of each sample (the first dimension) against its reference; their mean is the
    convention of the caching papers, where :func:`psnr` pools the squared error of all samples (so the
    worst sample sets it)."""
    if x.shape != ref.shape or x.dim() < 1:
        raise ValueError(f"x and ref must have the same shape with a sample dimension, got {tuple(x.shape)} "
                         f"and {tuple(ref.shape)}")
    mse = ((x.double() - ref.double()) ** 2).reshape(x.shape[0], -1).mean(dim=1)
    return [math.inf if m == 0 else 10.0 * math.log10(data_range**2 / m) for m in mse.tolist()]


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, window: int = 7, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) over images ``(..., H, W)``, Gaussian window, no padding."""
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    h, w = x.shape[-2:]
    window = min(window, h, w)
    a = x.double().reshape(-1, 1, h, w)
    b = ref.double().reshape(-1, 1, h, w)
    k = _gaussian_window(window, sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = F.conv2d(a, k), F.conv2d(b, k)
    var_a = F.conv2d(a * a, k) - mu_a**2
    var_b = F.conv2d(b * b, k) - mu_b**2
    cov = F.conv2d(a * b, k) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
