"""Image metrics for generative models: Frechet distance in a feature space, PSNR, SSIM, a bicubic baseline,
and the small classifier CNN whose features the Frechet distance is measured in.

Frechet distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule", the FID): fit a Gaussian
to each set of features and compare them,
    d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
The FID proper uses Inception-v3 pool features; deepgen has no downloaded networks, so its features come
from a `FeatureClassifier` trained on the dataset's own train split. Numbers are comparable between runs on
the same dataset and classifier protocol, not with published FIDs.

Images here are (N, C, H, W) in [0, 1] unless said otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- Frechet distance ------------------------------------------------------------------------------


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, F) and b (M, F), N, M >= 2.

    Tr (S_a S_b)^(1/2) = Tr (R S_b R)^(1/2) with R = S_a^(1/2), and R S_b R is symmetric positive
    semi-definite, so both roots come from symmetric eigendecompositions (eigenvalues clipped at 0):
    exact for the singular covariances that dead features, a collapsed generator or N <= F give, where a
    general matrix square root of S_a S_b warns or needs an offset that biases the distance.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance: needs at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root_a @ s_b @ root_a
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu_a - mu_b
    # >= 0 in exact arithmetic; round-off can leave -1e-13 for identical sets
    return max(float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * trace_covmean), 0.0)


# --- reconstruction quality ------------------------------------------------------------------------


PSNR_CAP_DB = 100.0  # identical images (a blank one upsamples exactly): capped, so a mean over images stays finite


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image (N,) in dB: 10 log10(range^2 / MSE), at most PSNR_CAP_DB."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).clamp(max=PSNR_CAP_DB)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t**2 / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size), sums to 1


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (N,) (Wang et al. 2004): local means, variances and covariance
    under a Gaussian window (11 x 11, sigma 1.5), per channel, over valid positions only; the mean of the
    SSIM map over channels and positions. Images smaller than the window use an odd window that fits."""
    x, y = x.double(), y.double()
    c, h, w = x.shape[1:]
    size = min(window, h, w)
    size -= 1 - size % 2  # odd
    k = _gaussian_window(size, sigma).to(x.device).expand(c, 1, size, size)
    blur = lambda t: F.conv2d(t, k, groups=c)  # noqa: E731  (N, C, h', w') per-channel local means
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def bicubic_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline a super-resolution model must beat: bicubic interpolation, clamped to [0, 1]."""
    return F.interpolate(lr.float(), scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


# --- the feature network ---------------------------------------------------------------------------


class FeatureClassifier(nn.Module):
    """A small CNN classifier; its pooled last conv features (B, 4 * width) are the feature space of the
    Frechet distance, its conv maps the feature space of SRGAN's content loss, and its predictions judge a
    conditional GAN's samples. Input (B, C, H, W) in [0, 1]; any size from 4 x 4 up."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, depth: int = 1):
        """depth: 3 x 3 convs per stage (the first of a stage strides); 1 keeps the original three-conv net."""
        super().__init__()

        def block(a: int, b: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(a, b, 3, stride, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]

        def stage(a: int, b: int, stride: int) -> list[nn.Module]:
            return block(a, b, stride) + [m for _ in range(depth - 1) for m in block(b, b, 1)]

        self.depth = depth
        self.body = nn.Sequential(
            *stage(in_channels, width, 1),  # state size. width x H x W
            *stage(width, 2 * width, 2),  # state size. (2 width) x H/2 x W/2
            *stage(2 * width, 4 * width, 2),  # state size. (4 width) x H/4 x W/4
        )
        self.head = nn.Linear(4 * width, num_classes)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2 - 1)  # (B, 4 width, H/4, W/4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_maps(x).mean((2, 3))  # (B, 4 width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits


def rotation_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-supervised targets for unlabelled images (Gidaris et al. 2018, RotNet): each square image
    turned by k * 90 degrees, k drawn uniformly from {0, 1, 2, 3}; the target is k. A quarter turn would
    change a non-square image's shape, so those get the four shape-keeping transforms instead: as is,
    mirrored left-right, turned 180 degrees, mirrored top-bottom."""
    k = torch.randint(0, 4, (len(x),), generator=generator).to(x.device)
    square = x.shape[2] == x.shape[3]
    out = x.clone()
    for r in range(1, 4):
        idx = k == r
        if square:
            out[idx] = torch.rot90(x[idx], r, dims=(2, 3))
        else:
            out[idx] = torch.flip(x[idx], dims={1: (3,), 2: (2, 3), 3: (2,)}[r])
    return out, k


def train_classifier(images: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int | None = None,
                     epochs: int = 3, batch_size: int = 128, lr: float = 2e-3, width: int = 32, seed: int = 0,
                     max_rows: int = 20_000, min_steps: int = 200, cosine: bool = False,
                     max_steps: int | None = None, noise: float = 0.0, shift: int = 0,
                     depth: int = 1, device: str | torch.device = "cpu",
                     subset_of: int | None = None) -> FeatureClassifier:
    """A FeatureClassifier trained on images (N, C, H, W) in [0, 1]: on the labels when given, otherwise on
    predicting rotations (square images). Deterministic for a seed; the global RNG is left untouched.
    At most `max_rows` rows (a seeded subset) keep evaluation at seconds to a minute on a CPU; at least
    `min_steps` updates (more epochs on a small train split: 30 updates on digits left it at chance).
    At most `max_steps` updates (fewer epochs on a large split), where given.
    cosine: the learning rate decays from `lr` to 0 along a half cosine over all updates.
    noise, shift: each training image augmented (`augment`): pixel noise of a standard deviation drawn from
    U(0, noise), and a translation of up to `shift` pixels. depth: convs per stage (FeatureClassifier).
    device: where the updates run (batches are drawn and augmented on the CPU, so a seed draws the same
    batches anywhere); the classifier is returned on the CPU.
    subset_of N: `images` are already the rows `training_subset(N, max_rows, seed)` of N, in that order (a
    caller that reads only those rows, never the split); the classifier is the one all N rows would give."""
    gen = torch.Generator().manual_seed(seed)
    keep = subset_draw(subset_of or len(images), max_rows, gen)
    if keep is not None and subset_of is None:
        images, labels = images[keep], (labels[keep] if labels is not None else None)
    classes = 4 if labels is None else (num_classes or int(labels.max()) + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureClassifier(images.shape[1], classes, width, depth).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    per_epoch = math.ceil(len(images) / batch_size)
    epochs = max(epochs, math.ceil(min_steps / per_epoch))
    if max_steps is not None:
        epochs = max(min(epochs, math.ceil(max_steps / per_epoch)), 1)
    total = epochs * per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t / total, 1.0))) if cosine else 1.0)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:  # batch norm cannot train on one row where the last map is 1 x 1 (4 x 4 images)
                continue
            x = augment(images[idx].float(), noise, shift, gen)
            x, y = rotation_batch(x, gen) if labels is None else (x, labels[idx].long())
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    return model.cpu().eval()


def subset_draw(rows: int, max_rows: int, generator: torch.Generator) -> torch.Tensor | None:
    """The positions of the seeded `max_rows` of `rows` that train_classifier trains on (None: all rows)."""
    return torch.randperm(rows, generator=generator)[:max_rows] if rows > max_rows else None


def training_subset(rows: int, max_rows: int, seed: int) -> torch.Tensor | None:
    """What train_classifier(seed=seed, max_rows=max_rows) keeps of `rows` rows, drawn the same way."""
    return subset_draw(rows, max_rows, torch.Generator().manual_seed(seed))


def augment(x: torch.Tensor, noise: float, shift: int, generator: torch.Generator) -> torch.Tensor:
    """x (B, C, H, W) in [0, 1] -> the same images, each translated by (dy, dx) ~ U{-shift..shift}^2 (zeros
    shifted in) and given Gaussian pixel noise of standard deviation sigma ~ U(0, noise), clamped to [0, 1].
    A classifier trained only on clean images reads faint noise as another class (a judge trained so read
    real MNIST digits with noise of std 0.05 at 0.48 accuracy: benchmarks/README.md)."""
    if shift > 0:
        b, _, h, w = x.shape
        padded = F.pad(x, (shift, shift, shift, shift))
        dy, dx = (torch.randint(0, 2 * shift + 1, (2, b), generator=generator)).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if noise > 0:
        sigma = torch.rand(len(x), 1, 1, 1, generator=generator) * noise
        x = (x + sigma * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    return x


@torch.no_grad()
def classifier_features(model: FeatureClassifier, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, F) float64 features."""
    model.eval()
    out = [model.features(images[i:i + batch_size].float()).double().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


@torch.no_grad()
def classifier_hits(model: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 512) -> int:
    """How many images the model reads as their label."""
    model.eval()
    return sum(int((model(images[i:i + batch_size].float()).argmax(1) == labels[i:i + batch_size]).sum())
               for i in range(0, len(images), batch_size))


def classifier_accuracy(model: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 512) -> float:
    return classifier_hits(model, images, labels, batch_size) / max(len(images), 1)

