"""Autoencoders as a task: minimise reconstruction error of normal rows."""

from __future__ import annotations

import torch
from torch import nn

from deepgen.config import PipelineSpec
from deepgen.data.prepare import Manifest
from deepgen.models.autoencoders import Autoencoder, AutoencoderConfig, build_autoencoder
from deepgen.tasks import unwrap


def autoencoder_config(spec_model, shape: list[int]) -> AutoencoderConfig:
    hidden = spec_model.hidden if spec_model.kind == "dense_autoencoder" else spec_model.channels
    return AutoencoderConfig(
        input_shape=tuple(shape), latent_dim=spec_model.latent_dim, hidden=tuple(hidden), loss=spec_model.loss
    )


class AutoencoderTask:
    def __init__(self, spec: PipelineSpec, manifest: Manifest):
        self.spec = spec
        self.config = autoencoder_config(spec.model, manifest.shape)

    def build_models(self) -> dict[str, nn.Module]:
        return {"model": build_autoencoder(self.spec.model.kind, self.config)}

    def build_optimizers(self, models):
        t = self.spec.train
        return {"model": torch.optim.AdamW(models["model"].parameters(), lr=t.lr, weight_decay=t.weight_decay)}

    def train_step(self, models, optimizers, x):
        model, opt = models["model"], optimizers["model"]
        ae: Autoencoder = unwrap(model)
        loss = ae.reconstruction_error(x, model(x)).mean()  # forward through the DDP wrapper
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    def eval_step(self, models, x):
        model = models["model"]
        return {"loss": unwrap(model).reconstruction_error(x, model(x)).sum()}
