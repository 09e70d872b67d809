"""UNet (Ronneberger et al., 2015) for binary segmentation: an encoder-decoder with skip connections.

The encoder halves the resolution at each level while doubling the channels; the decoder upsamples and
concatenates the encoder's feature map of the same resolution, so fine detail lost in the bottleneck
comes back through the skips. Output: one logit per pixel; mask = sigmoid(logit) > 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    input_shape: tuple[int, int, int]  # (C, H, W)
    base_channels: int = 16  # channels at full resolution; doubled at each level down
    depth: int = 3  # number of 2x downsamplings

    @property
    def num_features(self) -> int:
        return math.prod(self.input_shape)


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c, b = config.input_shape[0], config.base_channels
        widths = [b * 2**i for i in range(config.depth + 1)]  # e.g. 16, 32, 64, 128
        self.down = nn.ModuleList([double_conv(c, widths[0])] + [
            double_conv(widths[i], widths[i + 1]) for i in range(config.depth)])
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                for i in reversed(range(config.depth)))
        self.merge = nn.ModuleList(double_conv(2 * widths[i], widths[i]) for i in reversed(range(config.depth)))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C*H*W) flattened rows -> mask logits (B, H*W)."""
        z = x.view(len(x), *self.config.input_shape)  # (B, C, H, W)
        skips = []
        for i, block in enumerate(self.down):
            z = block(z if i == 0 else F.max_pool2d(z, 2))
            skips.append(z)  # level i: (B, widths[i], H / 2^i, W / 2^i)
        z = skips.pop()
        for up, merge in zip(self.up, self.merge):
            skip = skips.pop()
            z = up(z)
            z = F.pad(z, (0, skip.shape[-1] - z.shape[-1], 0, skip.shape[-2] - z.shape[-2]))  # odd sizes
            z = merge(torch.cat([skip, z], dim=1))
        return self.head(z).flatten(1)  # (B, H*W)

    @staticmethod
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Pixel BCE plus soft Dice: BCE gives dense gradients, Dice counters the background's majority."""
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * target).sum(1) + 1) / (p.sum(1) + target.sum(1) + 1)
        return bce + dice.mean()

