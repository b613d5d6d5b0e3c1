"""A cheap "is it the right digit" check for zoo samples (needs scikit-learn).

A k-nearest-neighbour classifier fitted on the training digits labels each
sample; for clips, each frame's brightest 10×10 window is classified and the
frames vote. Used to check that samples are recognisable (and, for caching,
that a cached sample still shows the asked-for class).
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=None)
def _knn(size: int):
    from sklearn.neighbors import KNeighborsClassifier

    from ._data import image_dataset

    images, labels = image_dataset(size)
    return KNeighborsClassifier(n_neighbors=5).fit(images.reshape(len(images), -1).numpy(), labels.numpy())


def predict_labels(name: str, samples: torch.Tensor) -> torch.Tensor:
    """Predicted class per sample: ``(N, 16, 16)`` images or ``(N, F, 16, 16)`` clips in [0, 1]."""
    from ._specs import get_spec

    samples = samples.detach().float().cpu()
    if not get_spec(name).video:
        knn = _knn(samples.shape[-1])
        return torch.as_tensor(knn.predict(samples.reshape(len(samples), -1).numpy()))
    else:
        s = 10
        knn = _knn(s)
        n, f, h, w = samples.shape
        frames = samples.reshape(n * f, 1, h, w)
        # the brightest s×s window of each frame
        mass = torch.nn.functional.avg_pool2d(frames, s, stride=1)[:, 0]  # (NF, h-s+1, w-s+1)
        idx = mass.flatten(1).argmax(1)
        ys, xs = idx // mass.shape[-1], idx % mass.shape[-1]
        crops = torch.stack([frames[i, 0, y : y + s, x : x + s] for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist()))])
        per_frame = torch.as_tensor(knn.predict(crops.reshape(n * f, -1).numpy())).reshape(n, f)
        return torch.mode(per_frame, dim=1).values


def class_accuracy(name: str, samples: torch.Tensor, labels) -> float:
    """Fraction of ``samples`` that the k-NN check assigns to their asked-for ``labels``."""
    pred = predict_labels(name, samples)
    return float((pred == torch.as_tensor(list(labels))).float().mean())
