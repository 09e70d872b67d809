"""Multi-head scaled dot-product attention (Vaswani et al., 2017) for bidirectional encoders.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V,   computed per head, heads concatenated, projected.

The module calls `F.scaled_dot_product_attention`, which dispatches to a fused kernel (flash or
memory-efficient on GPU) instead of materialising the (T, T) score matrix; `reference_attention` is the
formula written out, kept so tests can check the fused path against it.

Padding: a key padding mask (B, T), True = a real token, stops every query from attending to pad keys.
Pad *queries* still produce outputs (attending to the real keys); callers ignore them. A sequence with no
real token at all has no key to attend to and gives NaN: every sequence must hold at least [CLS].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AttentionConfig:
    hidden: int  # model width C = heads * head size
    heads: int
    dropout: float = 0.0  # on the attention probabilities, training only

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """(max_len, dim) table: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(p / 10000^(2i/dim))."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    angles = position * inv_freq  # (max_len, ceil(dim/2))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])  # an odd dim has one sine column more than cosines
    return table


def padding_bias(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, True = real -> (B, 1, 1, T) bool that broadcasts over heads and queries."""
    return key_padding_mask[:, None, None, :]


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V written out; q, k, v (B, nh, T, hs) -> (B, nh, T, hs). For tests."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, T)
    if key_padding_mask is not None:
        scores = scores.masked_fill(~padding_bias(key_padding_mask), float("-inf"))
    return scores.softmax(dim=-1) @ v


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with one fused QKV projection: one (C, 3C) matmul instead of three (C, C)."""

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.proj = nn.Linear(config.hidden, config.hidden)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> q, k, v, each (B, nh, T, hs)."""
        B, T, C = x.shape
        nh = self.config.heads
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        return tuple(t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C); key_padding_mask (B, T) bool, True = real token, or None (no padding) -> (B, T, C).

        Pass None rather than an all-True mask when a batch has no padding: without a mask SDPA may pick
        the flash kernel, which does not take an arbitrary mask."""
        B, T, C = x.shape
        q, k, v = self.split_heads(x)
        mask = None if key_padding_mask is None else padding_bias(key_padding_mask)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.config.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, nh * hs): heads side by side again
        return self.proj(y)
