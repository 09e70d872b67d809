"""The super-resolution family: SRGAN (Ledig et al. 2017), a generator that upscales low-resolution images,
trained against a discriminator with a content loss in the feature space of a network phi.

The task is the GAN task's (deepgen.tasks.gan: batches, the divergence guard, DDP options, D's report,
export as a "generator" folder of kind srgan) with its own models, steps and evaluation: an SRResNet warm-up,
then the adversarial phase; judged by PSNR and SSIM against bicubic upsampling. Its predictor upscales:
`deepgen upscale` and the pyfunc read it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deepgen.data.dataset import split_rows, take_rows
from deepgen.errors import DataError
from deepgen.metrics import images as metrics
from deepgen.models import gans
from deepgen.tasks import Evaluation, unwrap
from deepgen.tasks.gan import FID_SAMPLES, GanTask, GeneratorSampler, _Pass


def srgan_config(m, shape: tuple[int, int, int]) -> gans.SRGANConfig:
    """The model config of an SRGAN spec (raises ValueError for image sizes it cannot take)."""
    if shape[1] != shape[2]:
        raise ValueError(f"srgan needs square images (its content network learns rotations); got {shape}")
    return gans.SRGANConfig(shape, m.scale, m.channels, m.num_blocks, m.ndf, m.bicubic_skip)


class SRGANTask(GanTask):
    monitor = (None, "min")  # the last epoch (no Frechet distance: an SRGAN is judged by PSNR and SSIM)
    periodic_metrics = ()
    make_config = staticmethod(srgan_config)

    def __init__(self, spec, manifest):
        super().__init__(spec, manifest)
        self._sr_steps: int | None = None  # the step count, mirrored from the content network's buffer

    def build_models(self):
        c = self.config
        models = {"generator": gans.SRGANGenerator(c), "discriminator": gans.SRGANDiscriminator(c),
                  "feature_extractor": gans.ContentNetwork(self.shape[0], self.spec.model.feature_width)}
        return models | self._stabilisers(models)

    def build_optimizers(self, models):
        opts = super().build_optimizers(models)
        opts["feature_extractor"] = torch.optim.Adam(models["feature_extractor"].parameters(),
                                                     lr=self.spec.model.lr_features)
        return opts

    def train_step(self, models, optimizers, batch):
        """SRGAN in two phases, both inside the one loop (so checkpoints, resume and DDP need nothing new):
        warm-up (the paper's SRResNet pre-training): G minimises pixel MSE while the content network phi
        learns to predict rotations of real HR images; then phi is frozen and G, D play the SRGAN game."""
        G, D, phi_ = models["generator"], models["discriminator"], models["feature_extractor"]
        phi, m = unwrap(phi_), self.spec.model
        self._follow_schedule(optimizers)
        hr = self._images(batch)  # (B, C, H, W) in [-1, 1]
        lr = gans.degrade(hr, self.config.scale)  # (B, C, H/s, W/s)
        if self._sr_steps is None:  # one host sync per task, not per step
            self._sr_steps = int(phi.steps)
        self._sr_steps += 1
        if self._sr_steps <= m.warmup_steps:
            # (0) phi learns: minimise cross-entropy of the rotation of real HR images
            x, k = metrics.rotation_batch(gans.to_unit(hr))
            f_loss = F.cross_entropy(phi_(x).float(), k)
            optimizers["feature_extractor"].zero_grad(set_to_none=True)
            f_loss.backward()
            optimizers["feature_extractor"].step()
            phi.steps += 1
            # (2) G, SRResNet phase: minimise MSE(G(lr), hr)
            pixel = F.mse_loss(G(lr).float(), hr.float())
            optimizers["generator"].zero_grad(set_to_none=True)
            pixel.backward()
            optimizers["generator"].step()
            self.guard.observe(None, pixel)
            return {"loss": pixel.detach(), "g_loss": pixel.detach(), "pixel_loss": pixel.detach(),
                    "f_loss": f_loss.detach()}

        phi.eval().requires_grad_(False)  # frozen: never forwarded through its DDP wrapper from here on
        sr = G(lr)
        # (1) Update D: maximize log D(hr) + log(1 - D(G(lr)))
        for _ in range(m.d_steps):
            p = _Pass(sr, D(hr), D(sr.detach()))
            d_loss = gans.discriminator_loss(p.real_logits, p.fake_logits, m.loss)
            optimizers["discriminator"].zero_grad(set_to_none=True)
            d_loss.backward()
            optimizers["discriminator"].step()
        # (2) Update G: minimise MSE(sr, hr) + feature_weight MSE(phi(sr), phi(hr)) + adversarial_weight l_adv,
        #     l_adv = -log D(G(lr)) (non_saturating) or log(1 - D(G(lr))) (minimax)
        content, pixel, feature = gans.content_loss(sr, hr, phi, m.feature_weight)
        adv = gans.generator_loss(D(sr), m.loss)
        g_loss = content + m.adversarial_weight * adv
        optimizers["generator"].zero_grad(set_to_none=True)
        g_loss.backward()
        optimizers["generator"].step()
        self.guard.observe(d_loss, g_loss)
        out = self._report(p, d_loss, g_loss)
        return {**out, "loss": pixel.detach(), "pixel_loss": pixel.detach(), "feature_loss": feature.detach(),
                "adversarial_loss": adv.detach()}

    def eval_step(self, models, batch):
        n = len(batch["features"])
        hr = self._images(batch)
        sr = models["generator"](gans.degrade(hr, self.config.scale))
        mse = (gans.to_unit(sr) - gans.to_unit(hr)).pow(2).flatten(1).mean(1)  # (B,) on [0, 1] images
        psnr = (-10 * torch.log10(mse)).clamp(max=metrics.PSNR_CAP_DB)
        return {"loss": F.mse_loss(sr.float(), hr.float()) * n, "psnr": psnr.sum()}

    def evaluate(self, models, data_dir: Path, split: str = "test") -> Evaluation:
        """PSNR and SSIM of G's super-resolution of `split` against bicubic upsampling."""
        G = self.sampler(models).eval()
        x_test, _ = take_rows(data_dir, split, np.arange(min(split_rows(data_dir, split), FID_SAMPLES)))
        s = self.config.scale
        hr = self._unit_images(x_test)  # (N, C, H, W) in [0, 1]
        lr = gans.degrade(hr, s).clamp(0, 1)
        sr, bicubic = upscale(G, lr), metrics.bicubic_upsample(lr, s)
        result = {"psnr": metrics.psnr(sr, hr).mean().item(), "ssim": metrics.ssim(sr, hr).mean().item(),
                  "bicubic_psnr": metrics.psnr(bicubic, hr).mean().item(),
                  "bicubic_ssim": metrics.ssim(bicubic, hr).mean().item()}
        tags = {"sr_protocol": f"{len(hr)} test images, antialiased bicubic x{s} downsampling; PSNR/SSIM on "
                               "[0, 1] images, SSIM with an 11 x 11 Gaussian window, sigma 1.5, per channel"}
        figures = {"super_resolution": sr_comparison(lr[:6], bicubic[:6], sr[:6], hr[:6])}
        return Evaluation(result, registry_tags=tags, figures=figures)

    def epoch_extras(self, models, epoch: int):
        return {}, {}  # no sample grid: an SRGAN upscales given images

    def data_aid_missing(self, data_dir: Path) -> str | None:
        return None  # judged by PSNR and SSIM: no judge to train


@torch.no_grad()
def upscale(G, lr: torch.Tensor | np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Low-resolution images (N, C, h, w) in [0, 1] -> (N, C, s*h, s*w) in [0, 1] through an SRGAN generator."""
    G.eval()
    lr = torch.as_tensor(lr, dtype=torch.float32)
    device = next(G.parameters()).device
    out = [gans.to_unit(G(lr[i:i + batch_size].to(device) * 2 - 1)).cpu() for i in range(0, len(lr), batch_size)]
    return torch.cat(out)


def sr_comparison(lr: torch.Tensor, bicubic: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor):
    """Rows: the low-resolution input (nearest-neighbour enlarged), bicubic, SRGAN, the original."""
    from deepgen.plots import subplots

    rows = {"input": F.interpolate(lr, size=hr.shape[2:], mode="nearest"), "bicubic": bicubic, "SRGAN": sr,
            "original": hr}
    n = len(hr)
    fig, axes = subplots(4, n, figsize=(1.3 * n, 5.4), squeeze=False)
    for r, (title, imgs) in enumerate(rows.items()):
        for i in range(n):
            img = imgs[i].numpy()
            axes[r][i].imshow(img.transpose(1, 2, 0) if img.shape[0] == 3 else img.mean(0), cmap="gray",
                              vmin=0, vmax=1)
            axes[r][i].axis("off")
        axes[r][0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    return fig



class Upscaler(GeneratorSampler):
    """An exported SRGAN generator: low-resolution images (N, C, h, w) in [0, 1] in, (N, C, s*h, s*w) out."""

    def sample_grid(self, n: int = 64, label: int | None = None, seed: int = 0) -> np.ndarray:
        raise DataError("an SRGAN generator upscales images; use `deepgen upscale`")

    def upscale(self, lr: np.ndarray) -> np.ndarray:
        """(N, C, h, w) in [0, 1] -> (N, C, s*h, s*w) in [0, 1]."""
        if lr.ndim != 4 or lr.shape[1] != self.meta.shape[0]:
            raise DataError(f"upscale takes images (N, {self.meta.shape[0]}, h, w); got {lr.shape}")
        return upscale(self.generator, lr).numpy()

    def answer(self, model_input) -> np.ndarray:
        return self.upscale(np.asarray(model_input, dtype=np.float32))

    def example_input(self) -> np.ndarray:
        c, h, w = self.meta.shape
        s = int(self.meta.config["scale"])
        return np.full((2, c, max(h // s, 1), max(w // s, 1)), 0.5)

    def signature(self, example):
        """Any image size: the generator is fully convolutional."""
        from mlflow.models.signature import ModelSignature
        from mlflow.types.schema import Schema, TensorSpec

        c = self.meta.shape[0]
        return ModelSignature(Schema([TensorSpec(np.dtype(np.float64), (-1, c, -1, -1))]),
                              Schema([TensorSpec(np.dtype(np.float32), (-1, c, -1, -1))]))


TASKS = {"srgan": SRGANTask}
PREDICTORS = {"generator": Upscaler}


def next_command(kind: str, name: str) -> str:
    return f"deepgen upscale --model {name}@champion --input small_pngs/ --output large_pngs/"
