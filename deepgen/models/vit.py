"""Attention on images: a Vision Transformer (Dosovitskiy et al. 2021) and a masked autoencoder built on it
(He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners").

ViT: cut the image into P x P patches, embed each by one strided conv (a linear map of its pixels), add a
2-D position (learned, or a fixed sine table per axis), prepend a [CLS] token where it pools, and run
pre-norm encoder blocks
    x = x + MSA(LN(x));   x = x + MLP(LN(x))
The image's representation is [CLS]'s final state or the mean of the patch states; a linear head classifies.

MAE: mask a random `mask_ratio` of the patches (per image: argsort of uniform noise, keep the first
(1 - ratio) N), encode the *visible* patches only, then a light decoder sees the encoded visible patches
and a shared learned [MASK] token at every masked position (each with its position) and predicts the pixels
of every patch. The loss is the squared error on the masked patches only:
    L = sum_i m_i * mean_p (x_ip - x^_ip)^2 / sum_i m_i,     m_i = 1 where patch i was masked
As an anomaly detector an image's score is that masked-patch error averaged over K fixed masks (the same K
masks for every image, drawn once from `mask_seed`), so a score depends on the image only.

Images come in as rows (B, C*H*W) in [0, 1] (deepgen's prepared splits) or as (B, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from deepgen.models.attention import AttentionConfig, MultiHeadSelfAttention, sinusoidal_positions


@dataclass(frozen=True)
class ViTConfig:
    input_shape: tuple[int, ...]  # (C, H, W); H and W multiples of patch_size
    patch_size: int = 4  # P: each token is a P x P patch
    hidden: int = 64  # model width C
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0  # feed-forward width = mlp_ratio * hidden
    dropout: float = 0.0  # on the residual branches and the embeddings
    attention_dropout: float = 0.0
    pool: str = "cls"  # "cls": [CLS]'s final state; "mean": the mean of the patch states
    position: str = "learned"  # "learned" or "sinusoidal" (fixed 2-D sine table)
    stem: str = "patch"  # "patch": the P x P strided conv alone; "conv": two 3 x 3 convs before it
    stem_channels: int = 32  # the conv stem's width

    def __post_init__(self) -> None:
        c, h, w = self.input_shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image side {h} x {w} is not a multiple of patch_size {self.patch_size}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"stem {self.stem!r}: patch or conv")

    @property
    def grid(self) -> tuple[int, int]:
        return self.input_shape[1] // self.patch_size, self.input_shape[2] // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        return self.input_shape[0] * self.patch_size ** 2


def sinusoidal_positions_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """(gh * gw, dim) fixed table, rows in raster order: half the channels encode the row with the 1-D sine
    table of attention.py, half the column (MAE's get_2d_sincos_pos_embed)."""
    gh, gw = grid
    half = dim // 2
    rows = sinusoidal_positions(gh, half)[:, None, :].expand(gh, gw, half)  # (gh, gw, dim/2)
    cols = sinusoidal_positions(gw, dim - half)[None, :, :].expand(gh, gw, dim - half)  # (gh, gw, dim - dim/2)
    return torch.cat([rows, cols], dim=-1).reshape(gh * gw, dim)


def as_images(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Rows (B, C*H*W) or images (B, C, H, W) -> images (B, C, H, W)."""
    return x.view(len(x), *shape) if x.dim() == 2 else x


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, P*P*C) with N = (H/P)(W/P), patches in raster order, pixels (row, col, channel)."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, gh, P, gw, P)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches: torch.Tensor, p: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, N, P*P*C) -> (B, C, H, W); the inverse of patchify."""
    C, H, W = shape
    x = patches.reshape(len(patches), H // p, W // p, p, p, C)  # (B, gh, gw, P, P, C)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(len(patches), C, H, W)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, H, W) each moved by whole pixels, dx and dy uniform in [-max_shift, max_shift], zeros shifted
    in: the translation a conv net is built to ignore and a ViT on a few thousand images must learn to."""
    if max_shift <= 0:
        return images
    B, _, H, W = images.shape
    d = torch.randint(-max_shift, max_shift + 1, (B, 2), generator=generator).to(images.device)
    theta = torch.zeros(B, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * d[:, 0] / W  # sample x + dx from x: the image moves by dx
    theta[:, 1, 2] = -2 * d[:, 1] / H
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class PatchEmbedding(nn.Module):
    """A P x P conv with stride P: one linear map of each patch's pixels to the model width.

    With `stem: conv` two 3 x 3 convs (stride 1, batch norm, ReLU) see the image first, so each patch token
    carries local edges and strokes, including across its patch's border, rather than raw pixels: the
    "early convolutions" of Xiao et al. 2021, which make a small ViT train faster and more reliably, kept
    at stride 1 here so that the patch grid (and so the token count) is the plain ViT's."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        c_in = config.input_shape[0]
        self.stem = None
        if config.stem == "conv":
            s = config.stem_channels
            self.stem = nn.Sequential(nn.Conv2d(c_in, s, 3, padding=1, bias=False), nn.BatchNorm2d(s), nn.ReLU(),
                                      nn.Conv2d(s, s, 3, padding=1, bias=False), nn.BatchNorm2d(s), nn.ReLU())
            c_in = s
        self.proj = nn.Conv2d(c_in, config.hidden, config.patch_size, stride=config.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            images = self.stem(images)  # (B, S, H, W)
        x = self.proj(images)  # (B, C_model, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, C_model), raster order


class ViTBlock(nn.Module):
    """Pre-norm encoder block: x + MSA(LN(x)), then x + MLP(LN(x)) (GELU)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, dropout: float, attention_dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden)
        self.attn = MultiHeadSelfAttention(AttentionConfig(hidden, heads, attention_dropout))
        self.ln_2 = nn.LayerNorm(hidden)
        inner = int(mlp_ratio * hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))  # (B, T, C)
        return x + self.drop(self.mlp(self.ln_2(x)))  # (B, T, C)


class ViTEncoder(nn.Module):
    """Patch embedding + 2-D positions, an optional [CLS], pre-norm blocks and a final LayerNorm."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = PatchEmbedding(c)
        if c.position == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, c.num_patches, c.hidden) * 0.02)
        else:
            self.register_buffer("pos_embed", sinusoidal_positions_2d(c.grid, c.hidden)[None], persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.hidden)) if c.pool == "cls" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(ViTBlock(c.hidden, c.heads, c.mlp_ratio, c.dropout, c.attention_dropout)
                                    for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.hidden)
        self.apply(_init_weights)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> patch tokens with their positions (B, N, C_model)."""
        return self.patch_embed(images) + self.pos_embed

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, C_model) -> final states (B, T + 1, C_model) with [CLS] first, or (B, T, C_model)."""
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)  # (B, 1 + T, C)
        x = self.drop(tokens)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rows (B, C*H*W) or images -> the pooled representation (B, C_model)."""
        states = self.encode(self.embed(as_images(x, self.config.input_shape)))
        return states[:, 0] if self.config.pool == "cls" else states.mean(1)


def _init_weights(m: nn.Module) -> None:
    # ViT/MAE: xavier-uniform linears (the patch conv treated as a linear), zero biases, unit LayerNorms
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _flops_per_image(encoder: ViTEncoder, tokens: int) -> float:
    """Training FLOPs (forward + backward) of the encoder on one image of `tokens` tokens, matmuls only
    (as BertForPreTraining.estimate_flops_per_token): 6 * N_blocks per token, + 12 * L * C * T per token for
    QK^T and AV, + the patch embedding (6 * its weights per patch token) and a conv stem's (6 * its weights
    per pixel)."""
    c = encoder.config
    n_blocks = sum(p.numel() for p in encoder.blocks.parameters())
    patch = encoder.patch_embed.proj.weight.numel()
    stem = encoder.patch_embed.stem
    pixels = c.input_shape[1] * c.input_shape[2]
    stem_flops = 0 if stem is None else 6 * pixels * sum(m.weight.numel() for m in stem if isinstance(m, nn.Conv2d))
    return tokens * (6 * n_blocks + 12 * c.layers * c.hidden * tokens) + 6 * patch * c.num_patches + stem_flops


# --- classification --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViTClassifierConfig(ViTConfig):
    num_classes: int = 10
    classifier_dropout: float = 0.0


class ViTClassifier(nn.Module):
    """ViT encoder + a linear head on the pooled representation."""

    def __init__(self, config: ViTClassifierConfig):
        super().__init__()
        self.config = config
        self.vit = ViTEncoder(config)
        self.drop = nn.Dropout(config.classifier_dropout)
        self.head = nn.Linear(config.hidden, config.num_classes)
        nn.init.zeros_(self.head.weight)  # ViT: a zero-initialised head
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.vit(x)))  # (B, num_classes) logits

    def estimate_flops_per_image(self) -> float:
        c = self.config
        return _flops_per_image(self.vit, c.num_patches + (c.pool == "cls")) + 6 * c.hidden * c.num_classes

    def estimate_mfu(self, images_per_second: float, peak_flops: float) -> float:
        return self.estimate_flops_per_image() * images_per_second / peak_flops


# --- masked autoencoder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MAEConfig(ViTConfig):
    decoder_hidden: int = 32  # the light decoder's width
    decoder_layers: int = 1
    decoder_heads: int = 2
    mask_ratio: float = 0.75  # share of patches hidden from the encoder
    norm_pix_loss: bool = False  # targets normalised per patch (MAE's option); the score then too
    eval_masks: int = 4  # K fixed masks the anomaly score averages over
    eval_mask_ratio: float | None = None  # share of patches the K scoring masks hide; None: mask_ratio
    mask_seed: int = 0  # draws the K fixed masks

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoder_hidden % self.decoder_heads:
            raise ValueError(f"decoder_hidden ({self.decoder_hidden}) must be a multiple of decoder_heads "
                             f"({self.decoder_heads})")
        if self.num_visible < 1 or self.num_visible >= self.num_patches:
            raise ValueError(f"mask_ratio {self.mask_ratio} of {self.num_patches} patches leaves "
                             f"{self.num_visible} visible; at least one patch must be visible and one masked")
        if self.eval_visible < 1 or self.eval_visible >= self.num_patches:
            raise ValueError(f"eval_mask_ratio {self.eval_mask_ratio} of {self.num_patches} patches leaves "
                             f"{self.eval_visible} visible; at least one patch must be visible and one masked")

    @property
    def loss(self) -> str:
        """The reconstruction loss, as the autoencoders name theirs (the run's resolved_loss tag)."""
        return "mse"

    @property
    def num_visible(self) -> int:
        return int(self.num_patches * (1 - self.mask_ratio))

    @property
    def eval_visible(self) -> int:
        """Patches each scoring mask leaves visible."""
        ratio = self.mask_ratio if self.eval_mask_ratio is None else self.eval_mask_ratio
        return int(self.num_patches * (1 - ratio))


class MAEOutput(NamedTuple):
    pred: torch.Tensor  # (B, N, P*P*C) predicted pixels of every patch
    mask: torch.Tensor  # (B, N) 1 = masked (the loss counts these), 0 = visible
    target: torch.Tensor  # (B, N, P*P*C) the patches to predict (normalised per patch under norm_pix_loss)


def random_masking(n: int, batch: int, num_visible: int, generator: torch.Generator | None = None,
                   device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, a uniformly random subset of `num_visible` of n patches (MAE: argsort of uniform noise).

    Returns ids_keep (B, num_visible): visible patches in shuffled order; ids_restore (B, n): where each
    patch sits in the shuffled order (to unshuffle the decoder's sequence); mask (B, n) 1 = masked."""
    noise = torch.rand(batch, n, generator=generator, device=generator.device if generator else device)
    ids_shuffle = noise.argsort(dim=1)  # (B, n) ascending: the first num_visible are kept
    ids_restore = ids_shuffle.argsort(dim=1)  # (B, n)
    mask = torch.ones(batch, n, device=noise.device)
    mask[:, :num_visible] = 0
    mask = torch.gather(mask, 1, ids_restore)  # (B, n) back in patch order
    return ids_shuffle[:, :num_visible].to(device), ids_restore.to(device), mask.to(device)


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder ([CLS] or not, as ViTConfig.pool says) and a light pre-norm decoder.

    The anomaly-detector contract of deepgen.models.autoencoders: `anomaly_score(x)` (B,), `config.input_shape`;
    training through `forward` (random masks) and `objective`."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoder = ViTEncoder(c)
        self.decoder_embed = nn.Linear(c.hidden, c.decoder_hidden)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_hidden))
        self.register_buffer("decoder_pos_embed", sinusoidal_positions_2d(c.grid, c.decoder_hidden)[None],
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(ViTBlock(c.decoder_hidden, c.decoder_heads, c.mlp_ratio, 0.0, 0.0)
                                            for _ in range(c.decoder_layers))
        self.decoder_norm = nn.LayerNorm(c.decoder_hidden)
        self.decoder_pred = nn.Linear(c.decoder_hidden, c.patch_dim)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            m.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), visible ids (B, V) -> encoded visible tokens (B, [1 +] V, C_model)."""
        tokens = self.encoder.embed(images)  # (B, N, C_model), positions added before dropping patches
        visible = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, V, C_model)
        return self.encoder.encode(visible)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Encoded visible tokens (B, [1 +] V, C_model) -> predicted pixels of every patch (B, N, P*P*C)."""
        x = self.decoder_embed(latent)  # (B, [1 +] V, C_dec)
        cls = x[:, :1] if self.encoder.cls_token is not None else None
        if cls is not None:
            x = x[:, 1:]
        B, V, D = x.shape
        n = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.expand(B, n - V, -1)], dim=1)  # (B, N, C_dec), shuffled order
        x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, D))  # (B, N, C_dec), patch order
        x = x + self.decoder_pos_embed
        if cls is not None:
            x = torch.cat([cls, x], dim=1)  # (B, 1 + N, C_dec)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))  # (B, [1 +] N, P*P*C)
        return x[:, 1:] if cls is not None else x

    def target(self, images: torch.Tensor) -> torch.Tensor:
        t = patchify(images, self.config.patch_size)  # (B, N, P*P*C)
        if self.config.norm_pix_loss:
            t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
        return t

    def forward(self, x: torch.Tensor, masking: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                generator: torch.Generator | None = None) -> MAEOutput:
        """x rows (B, C*H*W) or images; `masking` = (ids_keep, ids_restore, mask) as random_masking gives,
        or None for a fresh random mask per image."""
        images = as_images(x, self.config.input_shape)
        if masking is None:
            masking = random_masking(self.config.num_patches, len(images), self.config.num_visible, generator,
                                     images.device)
        ids_keep, ids_restore, mask = masking
        pred = self.forward_decoder(self.forward_encoder(images, ids_keep), ids_restore)
        return MAEOutput(pred, mask, self.target(images))

    @staticmethod
    def patch_errors(out: MAEOutput) -> torch.Tensor:
        """Mean squared error of each masked patch's pixels, per image: (B,) = sum_i m_i e_i / sum_i m_i."""
        per_patch = (out.pred.float() - out.target.float()).pow(2).mean(-1)  # (B, N)
        return (per_patch * out.mask).sum(1) / out.mask.sum(1)

    def objective(self, out: MAEOutput) -> dict[str, torch.Tensor]:
        """The loss on masked patches only (visible patches do not count), the batch mean."""
        return {"loss": self.patch_errors(out).mean()}

    def fixed_masks(self, device: torch.device | None = None):
        """The K masks every image is scored with: (ids_keep (K, V), ids_restore (K, N), mask (K, N))."""
        c = self.config
        gen = torch.Generator().manual_seed(c.mask_seed)
        return random_masking(c.num_patches, c.eval_masks, c.eval_visible, gen, device)

    @torch.no_grad()
    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) the masked-patch error averaged over the K fixed masks."""
        ids_keep, ids_restore, mask = self.fixed_masks(x.device)
        scores = torch.zeros(len(x), dtype=torch.float32, device=x.device)
        for k in range(len(mask)):
            masking = tuple(t[k:k + 1].expand(len(x), -1) for t in (ids_keep, ids_restore, mask))
            scores += self.patch_errors(self(x, masking))
        return scores / len(mask)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Rows (B, D) -> (B, D): the first fixed mask's masked patches predicted, the visible ones kept (for
        pictures; under norm_pix_loss the predictions are in normalised units)."""
        ids_keep, ids_restore, mask = (t[:1].expand(len(x), -1) for t in self.fixed_masks(x.device))
        out = self(x, (ids_keep, ids_restore, mask))
        patches = torch.where(out.mask[..., None].bool(), out.pred, patchify(as_images(x, self.config.input_shape),
                                                                              self.config.patch_size))
        return unpatchify(patches, self.config.patch_size, self.config.input_shape).reshape(len(x), -1)

    def estimate_flops_per_image(self) -> float:
        """Training FLOPs per image: the encoder on the visible tokens, the decoder on all of them."""
        c = self.config
        enc = _flops_per_image(self.encoder, c.num_visible + (c.pool == "cls"))
        t = c.num_patches + (c.pool == "cls")
        n_dec = sum(p.numel() for p in self.decoder_blocks.parameters()) + self.decoder_pred.weight.numel()
        return enc + t * (6 * n_dec + 12 * c.decoder_layers * c.decoder_hidden * t)
