"""Autoencoders: an encoder h = f(x) and a decoder r = g(h), trained to reconstruct x.

Undercomplete: the code h is narrower than x, so the model must learn the data's most salient structure
rather than copy it. Decoders return *logits*; r = sigmoid(logits) lies in [0, 1] like the inputs, and the
BCE loss is computed from the logits (numerically stable, and safe under bf16 autocast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AutoencoderConfig:
    input_shape: tuple[int, ...]  # (D,) or (C, H, W)
    latent_dim: int = 8
    hidden: tuple[int, ...] = (64,)  # dense: widths before the code; conv: channels per stride-2 stage
    loss: str = "bce"  # "bce" or "mse"

    @property
    def num_features(self) -> int:
        return math.prod(self.input_shape)


class Autoencoder(nn.Module):
    """Shared behaviour: reconstruction, per-row reconstruction error (the anomaly score) and the loss."""

    config: AutoencoderConfig

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Code (B, latent) -> logits (B, D)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D) flattened, in [0, 1] -> reconstruction logits (B, D)."""
        return self.decode(self.encode(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))

    def reconstruction_error(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Per-row error (B,) under the configured loss; the anomaly score."""
        logits = logits.float()
        if self.config.loss == "bce":
            # BCE needs targets in [0, 1]; table rows beyond the training range are clamped.
            return F.binary_cross_entropy_with_logits(logits, x.clamp(0, 1), reduction="none").mean(1)
        return (torch.sigmoid(logits) - x).pow(2).mean(1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruction_error(x, self(x)).mean()


class DenseAutoencoder(Autoencoder):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        widths = [config.num_features, *config.hidden]
        enc: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*enc, nn.Linear(widths[-1], config.latent_dim))  # (B, latent)
        dec: list[nn.Module] = [nn.Linear(config.latent_dim, widths[-1])]
        for a, b in zip(widths[::-1], widths[::-1][1:]):
            dec += [nn.ReLU(), nn.Linear(a, b)]
        self.decoder = nn.Sequential(*dec)  # (B, D) logits

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(h)


class ConvAutoencoder(Autoencoder):
    """Stride-2 3x3 convs halve H and W per stage; transposed convs restore the exact sizes."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        if len(config.input_shape) != 3:
            raise ValueError(f"conv_autoencoder needs image rows (C, H, W), got shape {config.input_shape}")
        self.config = config
        c, h, w = config.input_shape
        chans = [c, *config.hidden]
        self.sizes = [(h, w)]  # spatial size before each stage, to undo rounding on the way up
        for _ in config.hidden:
            h, w = (h + 1) // 2, (w + 1) // 2
            self.sizes.append((h, w))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU())
            for a, b in zip(chans, chans[1:])
        )  # state size. chans[-1] x h x w
        flat = chans[-1] * h * w
        self.to_code = nn.Linear(flat, config.latent_dim)
        self.from_code = nn.Linear(config.latent_dim, flat)
        rev = chans[::-1]
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(a, b, 3, stride=2, padding=1) for a, b in zip(rev, rev[1:])
        )
        self.up_norm = nn.ModuleList(nn.BatchNorm2d(b) for b in rev[1:-1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = x.view(len(x), *self.config.input_shape)  # (B, C, H, W)
        for stage in self.down:
            z = stage(z)
        return self.to_code(z.flatten(1))  # (B, latent)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        c, (hh, ww) = self.config.hidden[-1], self.sizes[-1]
        z = F.relu(self.from_code(h)).view(len(h), c, hh, ww)
        for i, deconv in enumerate(self.up):
            size = self.sizes[-2 - i]
            z = deconv(z, output_size=size)  # (B, c_i, *size)
            if i < len(self.up_norm):
                z = F.relu(self.up_norm[i](z))
        return z.flatten(1)  # (B, C*H*W) logits


def build_autoencoder(kind: str, config: AutoencoderConfig) -> Autoencoder:
    return {"dense_autoencoder": DenseAutoencoder, "conv_autoencoder": ConvAutoencoder}[kind](config)
