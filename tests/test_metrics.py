"""dicache.metrics: PSNR pooled over samples and per sample, SSIM."""

import math

import pytest
import torch

from dicache.metrics import psnr, psnr_per_sample, ssim


def test_psnr_per_sample_is_each_sample_alone_and_its_mean_bounds_the_pooled_psnr():
    g = torch.Generator().manual_seed(7)
    ref = torch.rand(5, 3, 9, 11, generator=g)
    noise = torch.randn(5, 3, 9, 11, generator=g) * torch.tensor([1e-3, 1e-2, 3e-2, 1e-1, 2e-3]).view(5, 1, 1, 1)
    x = ref + noise
    got = psnr_per_sample(x, ref)
    assert len(got) == 5
    for i in range(5):
        assert got[i] == pytest.approx(psnr(x[i:i + 1], ref[i:i + 1]), abs=1e-9)
        mse = float(((x[i].double() - ref[i].double()) ** 2).mean())
        assert got[i] == pytest.approx(-10 * math.log10(mse), abs=1e-9)
    # one noisy sample sets the pooled PSNR; the mean of the samples' PSNR is at least it
    assert sum(got) / 5 > psnr(x, ref) + 3.0
    # an identical sample is inf, the others stay finite; data_range scales every sample alike
    x[2] = ref[2]
    got = psnr_per_sample(x, ref)
    assert math.isinf(got[2]) and all(math.isfinite(v) for k, v in enumerate(got) if k != 2)
    two = psnr_per_sample(2 * x, 2 * ref, data_range=2.0)
    assert [a == pytest.approx(b) for a, b in zip(two, got)] == [True] * 5


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        psnr_per_sample(torch.rand(2, 4), torch.rand(3, 4))
    with pytest.raises(ValueError, match="sample dimension"):
        psnr_per_sample(torch.tensor(0.5), torch.tensor(0.4))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(1, 8, 8), torch.rand(1, 8, 9))
    assert ssim(torch.full((1, 8, 8), 0.3) + torch.rand(1, 8, 8) * 0.1, torch.rand(1, 8, 8)) < 1.0
