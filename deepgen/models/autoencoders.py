"""Autoencoders: an encoder h = f(x) and a decoder r = g(h), trained to reconstruct x.

Undercomplete: the code h is narrower than x, so the model must learn the data's most salient structure
rather than copy it. The regularised variants at the end of this file (Goodfellow et al., Deep Learning,
ch. 14) keep it from copying by other means: overcomplete with dropout and weight decay, sparse (a penalty
Omega(h) on the code), denoising (reconstruct x from a corrupted x~). Each wraps a dense or conv backbone;
the VAE lives in vae.py.

Decoders return *logits*; r = sigmoid(logits) lies in [0, 1] like the inputs, and the BCE loss is computed
from the logits (numerically stable, and safe under bf16 autocast).

What the training task relies on, the same for every variant:
    out = model(model.corrupt(x))   AutoencoderOutput (corrupt: identity except denoising; training only)
    model.objective(x, out)         {"loss": ..., plus terms such as "recon", "sparsity", "kl"}
    model.anomaly_score(x)          (B,)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

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


class AutoencoderOutput(NamedTuple):
    """One forward pass. A NamedTuple, not a dataclass: DDP and torch.compile look inside tuples for the
    tensors of the autograd graph, and would treat a dataclass as an opaque leaf."""

    logits: torch.Tensor  # (B, D) reconstruction logits; r = sigmoid(logits)
    code: torch.Tensor  # (B, latent) the code h the decoder read
    mu: torch.Tensor | None = None  # (B, latent) VAE: mean of q(h|x)
    logvar: torch.Tensor | None = None  # (B, latent) VAE: log-variance of q(h|x)


class Autoencoder(nn.Module):
    """Shared behaviour: forward, reconstruction, the training objective and the anomaly score.

    Every autoencoder first maps its input x to x' = (x - input_low) / input_span, per feature, and
    reconstructs x'. The range is the identity (0, 1) unless the task sets it (`set_input_range`) to the
    normal training rows' range: then a normal row lies in [0, 1], and a value beyond every normal row's
    lies outside what the sigmoid decoder can produce, so it is rebuilt with an error however simple the
    row is otherwise. The range is a buffer: it travels with the weights into checkpoints and exports.
    """

    config: AutoencoderConfig

    def __init__(self):
        super().__init__()
        self.register_buffer("input_low", torch.zeros(()))  # () or (D,)
        self.register_buffer("input_span", torch.ones(()))

    def set_input_range(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Map [low, high] (D,) of each feature to [0, 1]; a constant feature keeps span 1."""
        span = high - low
        self.input_low = low.float().clone()
        self.input_span = torch.where(span > 0, span, torch.ones_like(span)).float()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D) as the model sees and rebuilds it."""
        return (x - self.input_low) / self.input_span

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints and exports from before the input range: the identity; a (D,) range replaces the ()
        for name, identity in (("input_low", torch.zeros(())), ("input_span", torch.ones(()))):
            value = state_dict.setdefault(prefix + name, identity)
            setattr(self, name, torch.empty_like(value, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D) -> the encoder's last representation before the code layer, (B, F)."""
        raise NotImplementedError

    def code_layer(self) -> nn.Linear:
        """The linear map features (B, F) -> code (B, latent)."""
        raise NotImplementedError

    def encoder_widths(self) -> list[int]:
        """Width of every representation from the first hidden layer to the code, for capacity checks."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.code_layer()(self.features(x))  # (B, latent)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Code (B, latent) -> logits (B, D)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """x (B, D) flattened -> logits (B, D) of its normalised reconstruction, and the code (B, latent)."""
        h = self.encode(self.normalize(x))
        return AutoencoderOutput(self.decode(h), h)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """The input the model sees in training; the objective still compares with the clean x."""
        return x

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """r (B, D) in the units of x."""
        return self.denormalize(torch.sigmoid(self(x).logits))

    def denormalize(self, r: torch.Tensor) -> torch.Tensor:
        return r * self.input_span + self.input_low

    def reconstruction_error(self, x: torch.Tensor, out: AutoencoderOutput) -> torch.Tensor:
        """Per-row error (B,) under the configured loss, averaged over features."""
        logits, x = out.logits.float(), self.normalize(x)
        if self.config.loss == "bce":
            # BCE needs targets in [0, 1]; table rows beyond the training range are clamped.
            return F.binary_cross_entropy_with_logits(logits, x.clamp(0, 1), reduction="none").mean(1)
        return (torch.sigmoid(logits) - x).pow(2).mean(1)

    def objective(self, x: torch.Tensor, out: AutoencoderOutput) -> dict[str, torch.Tensor]:
        """{"loss": what training minimises, and the terms it sums}, each a batch mean; x is the clean input."""
        return {"loss": self.reconstruction_error(x, out).mean()}

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) higher = less like the training data; call in eval mode (no dropout, no sampling)."""
        return self.reconstruction_error(x, self(x))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.objective(x, self(self.corrupt(x)))["loss"]


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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder[:-1](x)  # (B, hidden[-1]), or x itself when there are no hidden layers

    def code_layer(self) -> nn.Linear:
        return self.encoder[-1]

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(h)

    def encoder_widths(self) -> list[int]:
        return [*self.config.hidden, self.config.latent_dim]


class ConvAutoencoder(Autoencoder):
    """Stride-2 3x3 convs halve H and W per stage; transposed convs restore the exact sizes."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        if len(config.input_shape) != 3:
            raise ValueError(f"a conv autoencoder needs image rows (C, H, W), got shape {config.input_shape}")
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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        z = x.view(len(x), *self.config.input_shape)  # (B, C, H, W)
        for stage in self.down:
            z = stage(z)
        return z.flatten(1)  # (B, chans[-1] * h * w)

    def code_layer(self) -> nn.Linear:
        return self.to_code

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        c, (hh, ww) = self.config.hidden[-1], self.sizes[-1]
        z = F.relu(self.from_code(h)).view(len(h), c, hh, ww)
        for i, deconv in enumerate(self.up):
            size = self.sizes[-2 - i]
            z = deconv(z, output_size=size)  # (B, c_i, *size)
            if i < len(self.up_norm):
                z = F.relu(self.up_norm[i](z))
        return z.flatten(1)  # (B, C*H*W) logits

    def encoder_widths(self) -> list[int]:
        return [c * h * w for c, (h, w) in zip(self.config.hidden, self.sizes[1:])] + [self.config.latent_dim]


# --- regularised variants (Goodfellow et al., Deep Learning, 14.2-14.5) -----------------------------


@dataclass(frozen=True)
class OvercompleteConfig(AutoencoderConfig):
    architecture: str = "dense"  # backbone: "dense" or "conv"
    dropout: float = 0.5  # probability of zeroing each code unit in training


@dataclass(frozen=True)
class SparseConfig(AutoencoderConfig):
    architecture: str = "dense"
    penalty: str = "kl"  # "kl": sum_j KL(rho || rho_hat_j); "l1": sum_j |h_j|
    rho: float = 0.05  # kl: target mean activation of each code unit
    beta: float = 1.0  # kl: weight of the penalty
    l1_weight: float = 1e-3  # l1: weight of the penalty (lambda)


@dataclass(frozen=True)
class DenoisingConfig(AutoencoderConfig):
    architecture: str = "dense"
    noise: str = "mask"  # "mask": zero a random fraction of input units; "gaussian": add N(0, noise_std^2)
    mask_fraction: float = 0.5
    noise_std: float = 0.2


BACKBONES = {"dense": DenseAutoencoder, "conv": ConvAutoencoder}


class RegularizedAutoencoder(Autoencoder):
    """A dense or conv autoencoder (`net`, the backbone); the variant changes the code, input or objective."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.net = BACKBONES[config.architecture](config)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def code_layer(self) -> nn.Linear:
        return self.net.code_layer()

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.net.decode(h)

    def encoder_widths(self) -> list[int]:
        return self.net.encoder_widths()


class OvercompleteAutoencoder(RegularizedAutoencoder):
    """A code wider than the input, and no narrower layer on the way to it: the model could copy x to r
    unchanged, so only regularisation makes it learn the data: dropout on the code units here, weight
    decay in the optimizer (the task sets it)."""

    def __init__(self, config: OvercompleteConfig):
        super().__init__(config)
        *hidden, code = self.encoder_widths()
        d = config.num_features
        if code <= d or any(w < d for w in hidden):
            raise ValueError(f"overcomplete_autoencoder: the code ({code}) must be wider than the input ({d}) "
                             f"and no layer before it narrower (widths {hidden}); otherwise it is undercomplete")
        self.code_dropout = nn.Dropout(config.dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.code_dropout(super().encode(x))  # (B, latent), each unit zeroed w.p. dropout in training


class SparseAutoencoder(RegularizedAutoencoder):
    """A sigmoid code h in (0, 1)^latent with a sparsity penalty Omega(h) (Ng, CS294A notes, "Sparse
    autoencoder"; Goodfellow et al. 14.2.1):
        kl:  loss = recon + beta * sum_j KL(rho || rho_hat_j),  rho_hat_j = mean of h_j over the batch
        l1:  loss = recon + l1_weight * mean over rows of sum_j |h_j|
    """

    config: SparseConfig

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().encode(x))  # (B, latent) in (0, 1)

    def sparsity(self, h: torch.Tensor) -> torch.Tensor:
        h = h.float()
        if self.config.penalty == "l1":
            return h.abs().sum(1).mean()
        rho, rho_hat = self.config.rho, h.mean(0).clamp(1e-6, 1 - 1e-6)  # (latent,), this worker's batch
        return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()

    def objective(self, x: torch.Tensor, out: AutoencoderOutput) -> dict[str, torch.Tensor]:
        recon, sparsity = self.reconstruction_error(x, out).mean(), self.sparsity(out.code)
        weight = self.config.beta if self.config.penalty == "kl" else self.config.l1_weight
        return {"loss": recon + weight * sparsity, "recon": recon, "sparsity": sparsity}


class DenoisingAutoencoder(RegularizedAutoencoder):
    """Vincent et al. 2008: minimise L(x, g(f(x~))) with x~ drawn from a corruption C(x~ | x):
        mask:      each input unit zeroed with probability mask_fraction
        gaussian:  x~ = x + N(0, noise_std^2)
    The model sees x~ in training only; the loss compares with the clean x, and scoring uses clean x."""

    config: DenoisingConfig

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.noise == "mask":
            return x * (torch.rand_like(x) >= self.config.mask_fraction).to(x.dtype)
        return x + self.config.noise_std * torch.randn_like(x)
