"""Variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

    encoder  q(h|x) = N(h; mu(x), diag(exp(logvar(x))))
    prior    p(h)   = N(0, I)
    decoder  p(x|h) = Bernoulli(sigmoid(logits(h)))   or   N(x; sigmoid(logits(h)), sigma^2 I)

Training minimises the negative evidence lower bound, one draw of h per row (the reparameterisation trick
h = mu + exp(logvar / 2) * eps, eps ~ N(0, I), makes it differentiable in mu and logvar):
    -ELBO(x) = -log p(x|h) + KL(q(h|x) || p(h))
Per row, the NLL is *summed* over the D features and the KL over the latent units; the loss is the batch
mean. A mean over features instead would weigh the KL D times more (a beta-VAE with beta = D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepgen.models.autoencoders import BACKBONES, Autoencoder, AutoencoderConfig, AutoencoderOutput

MIN_LOG_SIGMA = math.log(1e-3)  # floor of the Gaussian decoder's std, far below 8-bit pixel steps


@dataclass(frozen=True)
class VAEConfig(AutoencoderConfig):
    architecture: str = "dense"  # backbone: "dense" or "conv"
    decoder: str = "bernoulli"  # p(x|h): "bernoulli" or "gaussian"
    score: str = "elbo"  # anomaly score: "elbo" (-ELBO at h = mu) or "reconstruction" (-log p(x|mu))


class VAE(Autoencoder):
    config: VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.net = BACKBONES[config.architecture](config)  # its code layer gives mu
        self.to_logvar = nn.Linear(self.net.code_layer().in_features, config.latent_dim)
        if config.decoder == "gaussian":
            # sigma-VAE (Rybkin et al. 2021): one learned std shared by every feature. A fixed sigma = 1
            # would make the NLL tiny next to the KL on [0, 1] data, and the posterior collapse to the prior.
            self.log_sigma = nn.Parameter(torch.zeros(()))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.net.features(x)  # (B, F)
        return self.net.code_layer()(f), self.to_logvar(f)  # mu, logvar: (B, latent) each

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]  # the mean code

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.net.decode(h)  # (B, D) logits

    def encoder_widths(self) -> list[int]:
        return self.net.encoder_widths()

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        mu, logvar = self.posterior(self.normalize(x))
        # Training draws h ~ q(h|x); eval decodes the mean, so scores and reconstructions are deterministic.
        h = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        return AutoencoderOutput(self.decode(h), h, mu, logvar)

    def reconstruction_error(self, x: torch.Tensor, out: AutoencoderOutput) -> torch.Tensor:
        """-log p(x|h) per row (B,), summed over features (of x as the model sees it, `normalize`d)."""
        logits, x = out.logits.float(), self.normalize(x)
        if self.config.decoder == "bernoulli":
            return F.binary_cross_entropy_with_logits(logits, x.clamp(0, 1), reduction="none").sum(1)
        log_sigma = self.log_sigma.float().clamp(min=MIN_LOG_SIGMA)
        z = (x - torch.sigmoid(logits)) / log_sigma.exp()  # (B, D)
        return (0.5 * z.pow(2) + log_sigma + 0.5 * math.log(2 * math.pi)).sum(1)

    @staticmethod
    def kl(out: AutoencoderOutput) -> torch.Tensor:
        """KL(N(mu, exp(logvar)) || N(0, I)) in closed form, summed over latent units: (B,)."""
        mu, logvar = out.mu.float(), out.logvar.float()
        return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)

    # loss = -ELBO = E_q[-log p(x|h)] + KL(q(h|x) || p(h)), batch mean of per-row sums
    def objective(self, x: torch.Tensor, out: AutoencoderOutput) -> dict[str, torch.Tensor]:
        recon, kl = self.reconstruction_error(x, out).mean(), self.kl(out).mean()
        return {"loss": recon + kl, "recon": recon, "kl": kl}

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        out = self(x)  # in eval mode h = mu
        nll = self.reconstruction_error(x, out)  # (B,)
        return nll + self.kl(out) if self.config.score == "elbo" else nll

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws h ~ p(h) = N(0, I), decoded to the mean of p(x|h): (n, D) in the units of x."""
        was_training = self.training
        self.eval()  # batch norm in a conv decoder must use its running statistics
        device = self.to_logvar.weight.device
        h = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        samples = self.denormalize(torch.sigmoid(self.decode(h).float()))
        self.train(was_training)
        return samples
