"""Generative adversarial networks: a generator G maps noise z ~ N(0, I) to images, a discriminator D tells
real images from G's; the two play (Goodfellow et al. 2014)

    min_G max_D  V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))].

Variants, each a (generator, discriminator) pair of modules:
    gan      MLP G and D (Goodfellow et al. 2014)
    dcgan    strided (transposed) convs, batch norm, ReLU in G, LeakyReLU(0.2) in D (Radford et al. 2016)
    cgan     either of the above with a label embedding fed to G and D (Mirza & Osindero 2014)
    lapgan   a Laplacian pyramid of generators, each finer level conditioned on the coarser image
             (Denton et al. 2015)
    srgan    super-resolution: a residual G maps a low-resolution image to one `scale` times larger, trained
             on a content loss plus the adversarial loss (Ledig et al. 2017)

Contract the training task relies on:
    G(z, cond) -> images (B, C, H, W) in [-1, 1] (tanh)    cond: labels (B,) for cgan, else None
    D(x, cond) -> logits (B,)                              D(x) = sigmoid(logit)
    LAPGAN:  G(z, lowpass) -> per-level outputs,  D(bands, lowpass) -> logits (B, levels)
    SRGAN:   G(lr) -> sr (B, C, s*h, s*w),  D(x) -> logits (B,)
Discriminators return logits, never probabilities: the losses use BCE-with-logits, which is numerically
stable and safe under bf16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepgen.metrics.images import FeatureClassifier

# --- the adversarial losses ------------------------------------------------------------------------
# `loss` picks the pair (D's loss, G's loss):
#   non_saturating  D: BCE(D(x), 1) + BCE(D(G(z)), 0)      G: -log D(G(z))     (Goodfellow et al. 2014)
#   minimax         D: the same                             G: log(1 - D(G(z)))
#   hinge           D: E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]   G: -E[D(G(z))]
#                   (Lim & Ye 2017; Miyato et al. 2018, SN-GAN; BigGAN), D(.) the logit


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       loss: str = "non_saturating") -> torch.Tensor:
    """What D minimises. BCE losses: D maximises log D(x) + log(1 - D(G(z))), i.e. minimises
    BCE(D(x), 1) + BCE(D(G(z)), 0) = -V(D, G); log 4 = 1.386 where D cannot tell real from fake.
    hinge: max(0, 1 - D(x)) + max(0, 1 + D(G(z))) on the logits; 2 where all logits are 0, and 0 once D
    puts real above +1 and generated below -1 (it then stops pushing them further)."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if loss == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over the real batch x (Mescheder et al. 2018), differentiable in D's weights.
    `real` must require grad and be what D's logits were computed from. LAPGAN: `real` is the list of bands
    and the logits (B, levels) one per level's D, each of its own band: the sum of the levels' penalties."""
    inputs = real if isinstance(real, list) else [real]
    grads = torch.autograd.grad(real_logits.float().sum(), inputs, create_graph=True)
    return sum(g.float().pow(2).flatten(1).sum(1) for g in grads).mean()


def paired_labels(labels: torch.Tensor) -> torch.Tensor:
    """The labels with the second half set to the first: G's samples i and i + B/2 share a label, so mode
    seeking compares two noises under one condition (the batch keeps the data's label mix in expectation)."""
    h = len(labels) // 2
    paired = labels.clone()
    paired[h:2 * h] = labels[:h]
    return paired


def mode_seeking_ratio(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """mean |G(z_i) - G(z_i+h)| / mean |z_i - z_i+h| over the pairs (i, i + B/2) of a batch (MSGAN, Mao et
    al. 2019): how far apart two noises land. G adds weight / (ratio + 1e-5) to its loss, so a G that draws
    the same image for every z (a column of identical digits) pays for it."""
    h = len(fake) // 2
    if h == 0:
        return fake.new_ones(())
    gap = (fake[:h].float() - fake[h:2 * h].float()).abs().mean()
    return gap / (z[:h].float() - z[h:2 * h].float()).abs().mean()


def generator_loss(fake_logits: torch.Tensor, loss: str = "non_saturating") -> torch.Tensor:
    """What G minimises.
        minimax:         log(1 - D(G(z)))  = -BCE(D(G(z)), 0); its gradient vanishes when D rejects G(z)
                                              confidently, which is where G starts out
        non_saturating:  -log D(G(z))      =  BCE(D(G(z)), 1); the same fixed point, strong gradients early
                                              (Goodfellow et al. 2014, section 3)
        hinge:           -E[D(G(z))]        on the logits (SN-GAN, BigGAN)
    """
    fake_logits = fake_logits.float()
    if loss == "minimax":
        return -F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    if loss == "non_saturating":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if loss == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"unknown generator loss {loss!r}: non_saturating, minimax or hinge")


def auxiliary_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AC-GAN's class term (Odena et al. 2017): -log P(C = y | x) = CE(classifier(phi(x)), y). D minimises it on
    real images (it learns to classify the data), G on its own samples G(z, y) through that classifier (it
    learns to draw images of the asked label). What D's head learns from G's samples: `generated_class_loss`."""
    return F.cross_entropy(class_logits.float(), labels)


def generated_class_loss(class_logits: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor | None:
    """D's class term on generated images G(z, y), by `mode` (CGANSpec.aux_generated):
        real_only    none: the head learns on real images only, so early, unrecognisable samples cannot teach
                     it that any blob is a "3" (the bias of AC-GAN's fake term, Gong et al. 2019, TAC-GAN);
                     but G can then satisfy it with off-data images
        label        CE(C(G(z, y)), y), as Odena et al. 2017 (and most AC-GAN code) train it
        extra_class  CE(C(G(z, y)), K): a (K+1)-th class "generated" (Salimans et al. 2016), so an off-data
                     image scores as no label at all; G's term CE(C(G(z, y)), y) runs over all K + 1 outputs
    """
    if mode == "real_only":
        return None
    if mode == "extra_class":
        labels = torch.full_like(labels, class_logits.shape[1] - 1)
    return F.cross_entropy(class_logits.float(), labels)


# --- stabilisers: spectral normalisation of D, an exponential moving average of G -------------------


def diff_augment(x: torch.Tensor, policy: list[str] | tuple[str, ...]) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"): random,
    differentiable transforms of every batch D sees, real and generated alike (each image its own draw, from
    torch's generator), so D cannot memorise a small training set while G still learns the untransformed
    images (the transforms reach G's gradient, and what G is pushed towards is undone by nothing).
    x: (B, C, H, W) in [-1, 1]. policy, in order: "color" (brightness +U(-0.5, 0.5), saturation x U(0, 2)
    around the pixel's channel mean, contrast x U(0.5, 1.5) around the image's mean), "translation" (shifts of
    up to 1/8 of each side, zeros shifted in), "cutout" (a square of half each side set to 0, anywhere).
    The reference implementation's transforms and ranges."""
    for name in policy:
        x = _AUGMENTS[name](x)
    return x.contiguous()


def _color(x: torch.Tensor) -> torch.Tensor:
    n = len(x)
    x = x + (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def _grid(n: int, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(n, device=device), torch.arange(h, device=device),
                          torch.arange(w, device=device), indexing="ij")


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    b, i, j = _grid(n, h, w, x.device)
    rows, cols = (i + dy + 1).clamp(0, h + 1), (j + dx + 1).clamp(0, w + 1)  # off the image: the zero border
    return F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    b, i, j = _grid(n, ch, cw, x.device)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[b, (i + cy - ch // 2).clamp(0, h - 1), (j + cx - cw // 2).clamp(0, w - 1)] = 0
    return x * mask.unsqueeze(1)


_AUGMENTS = {"color": _color, "translation": _translation, "cutout": _cutout}
DIFF_AUGMENTS = tuple(_AUGMENTS)


def spectral_normalise(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018): every conv and linear weight W of D is used as
    W / sigma(W), sigma the largest singular value (one power iteration per training forward), so each
    layer is 1-Lipschitz and D cannot sharpen without bound. Batch norm, which would undo the bound, is
    replaced by the identity (SN-GAN's D has none). In place; returns the module."""
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            setattr(module, name, nn.Identity())
        elif isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, nn.utils.parametrizations.spectral_norm(child))
        elif not isinstance(child, nn.Embedding):  # a projection embedding stays unnormalised (as in SN-GAN's code)
            spectral_normalise(child)
    return module


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, updates: int) -> None:
    """theta_ema <- beta theta_ema + (1 - beta) theta with beta = min(decay, (1 + t) / (10 + t)), t the
    number of G updates so far (the warm-up of TensorFlow's ExponentialMovingAverage: early averages do not
    drag in the random initialisation). Buffers (batch norm's running statistics) are copied as they are,
    as BigGAN-PyTorch's ema does."""
    beta = min(decay, (1 + updates) / (10 + updates))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - beta)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


@torch.no_grad()
def standing_statistics(G: nn.Module, batches: int = 8, batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Batch norm's running mean and variance re-estimated on G's own samples (BigGAN's "standing
    statistics"): the EMA of G averages weights but takes G's running statistics as they are (`ema_update`),
    which were measured on G's activations, not the average's. Resets them, then the cumulative average
    (momentum None) over `batches` train-mode forwards of `batch_size` draws (labels uniform for a
    conditional G); the momenta and the train/eval mode are put back. In place; returns G."""
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return G
    was_training, momenta = G.training, [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # running stats = the plain average over the forwards below
    G.train()
    gen = torch.Generator().manual_seed(seed)
    num_classes = getattr(getattr(G, "config", None), "num_classes", 0)
    for _ in range(batches):
        labels = torch.randint(0, num_classes, (batch_size,), generator=gen) if num_classes else None
        G.sample(batch_size, labels, generator=gen)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return G.train(was_training)


def dcgan_init(module: nn.Module) -> None:
    """Radford et al. 2016: conv weights ~ N(0, 0.02); batch-norm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> images in [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# --- configs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GANConfig:
    """MLP generator and discriminator; conditional when num_classes > 0."""

    image_shape: tuple[int, int, int]  # (C, H, W)
    nz: int = 100  # size of the noise z
    hidden: tuple[int, ...] = (256, 512)  # G widths from z up; D uses them reversed
    num_classes: int = 0  # > 0: a label embedding conditions G and D
    embed_dim: int = 16

    @property
    def num_features(self) -> int:
        return math.prod(self.image_shape)


@dataclass(frozen=True)
class DCGANConfig:
    """Strided-conv generator and discriminator for square images of side 2^k >= 8."""

    image_shape: tuple[int, int, int]
    nz: int = 100
    ngf: int = 64  # G channels at the last hidden stage, doubled per stage towards 4 x 4
    ndf: int = 64  # D channels at the first stage, doubled per stage
    num_classes: int = 0
    embed_dim: int = 16  # G's label embedding (and D's, under concatenation)
    projection: bool = False  # D conditions by projection (Miyato & Koyama 2018), not by concatenated maps
    auxiliary: bool = False  # D has a class head (AC-GAN, Odena et al. 2017); its adversarial logit then sees
    #                          no label unless `projection` (a head beside concatenated label maps would read y)
    extra_class: bool = False  # the class head has a (K+1)-th output, "generated" (Salimans et al. 2016)

    def __post_init__(self):
        _, h, w = self.image_shape
        if h != w or not _power_of_two(h) or h < 8:
            raise ValueError(f"a DCGAN needs square images of side 8, 16, 32, 64, ...; got {h} x {w} "
                             "(resize in data preparation, or use the MLP `gan`)")


@dataclass(frozen=True)
class LapGANConfig:
    """A Laplacian pyramid of `levels` GANs: an MLP GAN at the coarsest level (H / 2^(levels-1)), conv GANs
    on the band-pass residuals of the finer levels."""

    image_shape: tuple[int, int, int]
    levels: int = 3
    nz: int = 100  # noise of the coarsest level; finer levels draw a noise plane of their own size
    hidden: tuple[int, ...] = (256, 512)  # coarsest level's MLP widths
    ngf: int = 64  # finer levels' generator channels
    ndf: int = 64  # finer levels' discriminator channels

    def __post_init__(self):
        _, h, w = self.image_shape
        k = 2 ** (self.levels - 1)
        if self.levels < 2 or h % k or w % k:
            raise ValueError(f"a {self.levels}-level LAPGAN needs images with sides divisible by {k}; "
                             f"got {h} x {w}")

    @property
    def coarse_shape(self) -> tuple[int, int, int]:
        c, h, w = self.image_shape
        return c, h >> (self.levels - 1), w >> (self.levels - 1)


@dataclass(frozen=True)
class SRGANConfig:
    """SRGAN for high-resolution images `image_shape` and their `scale`-times smaller inputs."""

    image_shape: tuple[int, int, int]  # the high-resolution (C, H, W)
    scale: int = 4  # 2 or 4: log2(scale) sub-pixel x2 stages
    channels: int = 64
    num_blocks: int = 16  # residual blocks (the paper's B = 16)
    ndf: int = 64
    bicubic_skip: bool = True  # learn the residual over bicubic upsampling (starts at bicubic's quality)

    def __post_init__(self):
        _, h, w = self.image_shape
        if self.scale not in (2, 4):
            raise ValueError(f"srgan scale must be 2 or 4, got {self.scale}")
        if h % self.scale or w % self.scale:
            raise ValueError(f"srgan scale {self.scale} needs image sides divisible by it; got {h} x {w}")


# --- vanilla and conditional GAN (MLP) -------------------------------------------------------------


class ImageGenerator(nn.Module):
    """Shared by the noise-to-image generators: `sample` draws z and (for cgan) checks the labels."""

    config: Any

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def condition(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """z (B, nz) -> (B, nz + embed_dim) with the label embedding appended, for a conditional G."""
        if self.config.num_classes == 0:
            if y is not None:
                raise ValueError("an unconditional generator takes no labels")
            return z
        if y is None:
            raise ValueError("a conditional generator needs a label per sample")
        return torch.cat([z, self.embed(y).to(z.dtype)], 1)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1]; `generator` seeds z."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.nz, generator=generator).to(device)
        return self(z, None if labels is None else labels.to(device))


def _label_embedding(config) -> nn.Embedding | None:
    return nn.Embedding(config.num_classes, config.embed_dim) if config.num_classes else None


class MLPGenerator(ImageGenerator):
    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.embed = _label_embedding(config)
        widths = [config.nz + (config.embed_dim if config.num_classes else 0), *config.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], config.num_features), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.condition(z, y)).view(len(z), *self.config.image_shape)  # (B, C, H, W)


class MLPDiscriminator(nn.Module):
    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.embed = _label_embedding(config)
        widths = [config.num_features + (config.embed_dim if config.num_classes else 0), *config.hidden[::-1]]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2, inplace=True)]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x.reshape(len(x), -1)  # (B, C*H*W)
        if self.embed is not None:
            h = torch.cat([h, self.embed(y).to(h.dtype)], 1)
        return self.net(h).squeeze(1)  # (B,) logits


# --- DCGAN (and its conditional form) --------------------------------------------------------------


class DCGANGenerator(ImageGenerator):
    """z (B, nz) as a 1 x 1 map, then transposed convs: 4 x 4, doubled per stage up to H x W.
    Channels for 64 x 64: ngf*8 at 4 x 4, ngf*4, ngf*2, ngf, then C (the pytorch/examples net)."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.config = config
        self.embed = _label_embedding(config)
        c, h, _ = config.image_shape
        stages = int(math.log2(h)) - 2  # doublings from 4 x 4 to H x W
        ch = [config.ngf * 2**i for i in reversed(range(stages))]  # e.g. [8ngf, 4ngf, 2ngf, ngf]
        nz = config.nz + (config.embed_dim if config.num_classes else 0)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, ch[0], 4, 1, 0, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU(True),
        ]  # state size. ch[0] x 4 x 4
        for a, b in zip(ch, ch[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
            # state size. b x 2s x 2s
        layers += [nn.ConvTranspose2d(ch[-1], c, 4, 2, 1, bias=False), nn.Tanh()]  # state size. C x H x W
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.condition(z, y)[:, :, None, None])  # (B, C, H, W)


class DCGANDiscriminator(nn.Module):
    """Strided convs halve H x W per stage down to 4 x 4, then a 4 x 4 conv to one logit. No batch norm on
    the first layer (Radford et al.). Conditional, two ways:
        concatenation  the label embedding enters as constant feature maps beside the image
        projection     D(x, y) = psi(phi(x)) + <e(y), sum_hw phi(x)>   (Miyato & Koyama 2018): phi(x) the
                       last 4 x 4 maps, psi the final conv, e(y) a learned vector per class; the logit rises
                       where the image's features agree with its label's vector
    and with `auxiliary` a class head on the pooled phi(x), C(x) = W sum_hw phi(x) + b (AC-GAN, Odena et al.
    2017), returned beside the logit when forward is asked for `classes`."""

    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.config = config
        c, h, _ = config.image_shape
        stages = int(math.log2(h)) - 2  # halvings from H x W to 4 x 4
        ch = [config.ndf * 2**i for i in range(stages)]  # e.g. [ndf, 2ndf, 4ndf, 8ndf]
        self.projection = bool(config.num_classes and config.projection)
        self.auxiliary = bool(config.num_classes and config.auxiliary)
        if self.projection:
            self.embed = nn.Embedding(config.num_classes, ch[-1])  # e(y), one vector per class
        elif self.auxiliary:
            self.embed = None  # AC-GAN: the adversarial logit is unconditional, the class head carries y
        else:
            self.embed = _label_embedding(config)
        classes = config.num_classes + int(config.extra_class)  # K labels (and "generated")
        self.classifier = nn.Linear(ch[-1], classes) if self.auxiliary else None
        c_in = c + (config.embed_dim if self.embed is not None and not self.projection else 0)
        layers: list[nn.Module] = [nn.Conv2d(c_in, ch[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        # state size. ndf x H/2 x W/2
        for a, b in zip(ch, ch[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
            # state size. b x s/2 x s/2, down to ch[-1] x 4 x 4
        layers += [nn.Conv2d(ch[-1], 1, 4, 1, 0, bias=False)]  # psi; state size. 1 x 1 x 1
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)
        if self.projection:
            nn.init.xavier_uniform_(self.embed.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, classes: bool = False):
        """(B,) logits; with `classes` (an auxiliary D) also the class logits (B, num_classes [+ 1])."""
        if classes and self.classifier is None:
            raise ValueError("this discriminator has no class head (DCGANConfig.auxiliary)")
        if self.embed is not None and not self.projection:
            maps = self.embed(y).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])  # (B, E, H, W)
            x = torch.cat([x, maps], 1)
        phi = self.net[:-1](x)  # (B, ch[-1], 4, 4)
        logits = self.net[-1](phi).flatten()  # (B,) psi(phi(x))
        pooled = phi.sum((2, 3))  # (B, ch[-1])
        if self.projection:
            logits = logits + (self.embed(y).to(phi.dtype) * pooled).sum(1)  # + <e(y), sum_hw phi(x)>
        return (logits, self.classifier(pooled)) if classes else logits  # (B,), (B, num_classes [+ 1])


# --- LAPGAN ----------------------------------------------------------------------------------------
# Pyramid of an image I_0 = I:  I_{k+1} = downsample(I_k),  l_k = upsample(I_{k+1}),  h_k = I_k - l_k.
# The bands [h_0, ..., h_{L-2}, I_{L-1}] give I back exactly: I_k = l_k + h_k from the coarsest up.
# Generation runs coarse to fine: I~_{L-1} = G_{L-1}(z), then I~_k = l~_k + G_k(z_k, l~_k), l~_k = up(I~_{k+1}).


def downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)  # (B, C, H/2, W/2)


def upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # (B, C, 2H, 2W)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """x (B, C, H, W) -> (bands, lowpass), finest first:
        bands   [h_0, ..., h_{L-2}, I_{L-1}]  band-pass residuals h_k (B, C, H/2^k, W/2^k), then the coarsest image
        lowpass [l_0, ..., l_{L-2}]           l_k = upsample(I_{k+1}), the condition of level k's generator
    """
    images = [x]
    for _ in range(levels - 1):
        images.append(downsample(images[-1]))
    lowpass = [upsample(i) for i in images[1:]]
    return [i - lp for i, lp in zip(images, lowpass)] + [images[-1]], lowpass


def reconstruct_from_pyramid(bands: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of `laplacian_pyramid`: I_k = upsample(I_{k+1}) + h_k, coarsest to finest."""
    image = bands[-1]
    for h in reversed(bands[:-1]):
        image = upsample(image) + h
    return image


class LaplacianLevelGenerator(nn.Module):
    """G_k: the upsampled coarser image l_k (C channels) and a noise plane (1 channel) -> residual h~_k.
    Three 3x3 convs at full level resolution; a linear output, since residuals are not bounded like images."""

    def __init__(self, channels: int, ngf: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels + 1, ngf, 3, 1, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.Conv2d(ngf, ngf, 3, 1, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            # state size. ngf x h x w
            nn.Conv2d(ngf, channels, 3, 1, 1),  # state size. C x h x w
        )

    def forward(self, lowpass: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([lowpass, noise.to(lowpass.dtype)], 1))


class LaplacianLevelDiscriminator(nn.Module):
    """D_k: a residual (real h_k or generated h~_k) with its condition l_k -> a logit. Denton et al. add
    l_k to the residual; concatenating gives D the same information and keeps both visible."""

    def __init__(self, channels: int, ndf: int, size: tuple[int, int]):
        super().__init__()
        stages = 2 if min(size) >= 8 else 1
        layers: list[nn.Module] = [nn.Conv2d(2 * channels, ndf, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for _ in range(stages):
            layers += [nn.Conv2d(ch, 2 * ch, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ch), nn.LeakyReLU(0.2, True)]
            ch *= 2  # state size. ch x h/2 x w/2 per stage
        flat = ch * (size[0] >> stages) * (size[1] >> stages)
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, 1))

    def forward(self, band: torch.Tensor, lowpass: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([band, lowpass], 1)).squeeze(1)  # (B,)


class LapGANGenerator(nn.Module):
    """One generator per pyramid level; `levels[k]` serves level k (0 = finest), `coarse` the coarsest."""

    def __init__(self, config: LapGANConfig):
        super().__init__()
        self.config = config
        c = config.image_shape[0]
        self.coarse = MLPGenerator(GANConfig(config.coarse_shape, config.nz, config.hidden))
        self.levels = nn.ModuleList(LaplacianLevelGenerator(c, config.ngf) for _ in range(config.levels - 1))
        self.levels.apply(dcgan_init)

    def forward(self, z: torch.Tensor, lowpass: list[torch.Tensor]) -> list[torch.Tensor]:
        """Training: every level at once, each finer level conditioned on the *real* l_k (levels train
        independently, as in the paper). z (B, nz), lowpass [l_0..l_{L-2}] ->
        [h~_0, ..., h~_{L-2}, I~_{L-1}]. One call, so DDP sees every level's parameters used."""
        fine = [g(lp, torch.randn_like(lp[:, :1])) for g, lp in zip(self.levels, lowpass)]
        return fine + [self.coarse(z)]

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
               return_residuals: bool = False):
        """n images (n, C, H, W), generated coarse to fine; with return_residuals also each finer level's
        generated residual [h~_0 (n, C, H, W), ..., h~_{L-2} (n, C, H/2^(L-2), W/2^(L-2))], finest first."""
        if labels is not None:
            raise ValueError("this LAPGAN is unconditional: it takes no labels")
        device = next(self.parameters()).device
        image = self.coarse.sample(n, generator=generator)  # (n, C, H/2^(L-1), W/2^(L-1))
        residuals = []
        for g in reversed(self.levels):
            lowpass = upsample(image)  # (n, C, 2h, 2w)
            noise = torch.randn(n, 1, *lowpass.shape[2:], generator=generator).to(device)
            residual = g(lowpass, noise)
            image = lowpass + residual
            residuals.insert(0, residual)
        return (image, residuals) if return_residuals else image


class LapGANDiscriminator(nn.Module):
    def __init__(self, config: LapGANConfig):
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        self.coarse = MLPDiscriminator(GANConfig(config.coarse_shape, config.nz, config.hidden))
        self.levels = nn.ModuleList(LaplacianLevelDiscriminator(c, config.ndf, (h >> k, w >> k))
                                    for k in range(config.levels - 1))
        self.levels.apply(dcgan_init)

    def forward(self, bands: list[torch.Tensor], lowpass: list[torch.Tensor]) -> torch.Tensor:
        """bands [h_0, ..., h_{L-2}, I_{L-1}] (real or generated), lowpass [l_0..l_{L-2}] -> logits (B, L)."""
        fine = [d(h, lp) for d, h, lp in zip(self.levels, bands, lowpass)]
        return torch.stack(fine + [self.coarse(bands[-1])], 1)


# --- SRGAN -----------------------------------------------------------------------------------------


def degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The low-resolution input of a high-resolution image: antialiased bicubic downsampling (as the SRGAN
    paper's MATLAB imresize). Linear with weights summing to 1, so [0, 1] and [-1, 1] images commute with it."""
    return F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)


class ResidualBlock(nn.Module):
    """k3n64s1 conv, BN, PReLU, k3n64s1 conv, BN, plus the input."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.PReLU(ch),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRGANGenerator(nn.Module):
    """lr (B, C, h, w) in [-1, 1] -> sr (B, C, s*h, s*w) in [-1, 1]: residual blocks at low resolution with
    a global skip, then log2(s) sub-pixel stages: a conv to 4x the channels, then PixelShuffle(2) rearranges
    (4c, h, w) -> (c, 2h, 2w)."""

    def __init__(self, config: SRGANConfig):
        super().__init__()
        self.config = config
        c, ch = config.image_shape[0], config.channels
        self.head = nn.Sequential(nn.Conv2d(c, ch, 9, 1, 4), nn.PReLU(ch))  # state size. ch x h x w
        self.body = nn.Sequential(*(ResidualBlock(ch) for _ in range(config.num_blocks)),
                                  nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))
        up: list[nn.Module] = []
        for _ in range(int(math.log2(config.scale))):
            up += [nn.Conv2d(ch, 4 * ch, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU(ch)]  # state size. ch x 2h x 2w
        self.upsample = nn.Sequential(*up)  # state size. ch x sh x sw
        self.tail = nn.Sequential(nn.Conv2d(ch, c, 9, 1, 4), nn.Tanh())  # state size. C x sh x sw
        if config.bicubic_skip:  # the residual starts at zero, so the first output is the bicubic image
            nn.init.zeros_(self.tail[0].weight)
            nn.init.zeros_(self.tail[0].bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h = self.head(lr)
        out = self.tail(self.upsample(h + self.body(h)))  # global skip around the residual blocks
        if not self.config.bicubic_skip:
            return out
        # (VDSR / ESRGAN-style) the network adds detail to bicubic upsampling instead of redrawing the image
        base = F.interpolate(lr, scale_factor=self.config.scale, mode="bicubic", align_corners=False)
        return (base + out).clamp(-1, 1)


class SRGANDiscriminator(nn.Module):
    """Eight 3x3 conv blocks, channels ndf..8ndf doubling every other block, stride 2 on every second
    (so H/16), then global average pooling (the paper's fixed 96 x 96 input allowed a flatten), a dense
    layer of 16 ndf (1024 for ndf 64), LeakyReLU and one logit."""

    def __init__(self, config: SRGANConfig):
        super().__init__()
        self.config = config
        c, n = config.image_shape[0], config.ndf
        layers: list[nn.Module] = [nn.Conv2d(c, n, 3, 1, 1), nn.LeakyReLU(0.2, True)]  # state size. ndf x H x W
        specs = [(n, n, 2), (n, 2 * n, 1), (2 * n, 2 * n, 2), (2 * n, 4 * n, 1), (4 * n, 4 * n, 2),
                 (4 * n, 8 * n, 1), (8 * n, 8 * n, 2)]
        for a, b, stride in specs:
            layers += [nn.Conv2d(a, b, 3, stride, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        # state size. 8ndf x H/16 x W/16
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * n, 16 * n),
                                  nn.LeakyReLU(0.2, True), nn.Linear(16 * n, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)  # (B,) logits


class ContentNetwork(nn.Module):
    """The feature space phi of SRGAN's content loss, a FeatureClassifier instead of a downloaded VGG.
    It learns to predict the rotation of real high-resolution images during the first `warmup_steps`
    steps (counted in `steps`, saved with the checkpoint), then is frozen; see deepgen.tasks.gan."""

    def __init__(self, channels: int, width: int = 32, num_classes: int = 4):
        super().__init__()
        self.classifier = FeatureClassifier(channels, num_classes, width)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [0, 1] -> class logits (B, num_classes)."""
        return self.classifier(x)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.feature_maps(x)  # (B, 4 width, H/4, W/4)


def content_loss(sr: torch.Tensor, hr: torch.Tensor, phi: ContentNetwork | None,
                 feature_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, pixel, feature) with pixel = MSE(sr, hr) on [-1, 1] images and
    feature = MSE(phi(sr), phi(hr)) on phi's conv maps of the [0, 1] images; total = pixel + w * feature."""
    pixel = F.mse_loss(sr.float(), hr.float())
    if phi is None or feature_weight == 0:
        return pixel, pixel, torch.zeros_like(pixel)
    with torch.no_grad():
        target = phi.feature_maps((hr + 1) / 2).float()
    feature = F.mse_loss(phi.feature_maps((sr + 1) / 2).float(), target)
    return pixel + feature_weight * feature, pixel, feature


# --- building generators from an exported config --------------------------------------------------


GENERATORS: dict[str, tuple[type[nn.Module], type]] = {
    "MLPGenerator": (MLPGenerator, GANConfig),
    "DCGANGenerator": (DCGANGenerator, DCGANConfig),
    "LapGANGenerator": (LapGANGenerator, LapGANConfig),
    "SRGANGenerator": (SRGANGenerator, SRGANConfig),
}


def build_generator(name: str, config: dict[str, Any] | Any) -> nn.Module:
    """A generator from its class name and config dataclass, or that dataclass as a dict (exported JSON)."""
    model_cls, config_cls = GENERATORS[name]
    if isinstance(config, dict):  # JSON lists back to the dataclass's tuples
        config = config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return model_cls(config)
