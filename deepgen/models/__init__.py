"""Pure-PyTorch models: importing them needs neither Ray nor MLflow.

`build_autoencoder(kind, config)` makes any autoencoder variant from its pipeline `model.kind` and its
config dataclass, or that dataclass as a dict (how an exported model's JSON stores it).
"""

from __future__ import annotations

from typing import Any

from deepgen.models.autoencoders import (
    Autoencoder,
    AutoencoderConfig,
    ConvAutoencoder,
    DenoisingAutoencoder,
    DenoisingConfig,
    DenseAutoencoder,
    OvercompleteAutoencoder,
    OvercompleteConfig,
    SparseAutoencoder,
    SparseConfig,
)
from deepgen.models.vae import VAE, VAEConfig
from deepgen.models.vit import MAEConfig, MaskedAutoencoderViT

AUTOENCODERS: dict[str, tuple[type, type]] = {  # kind -> (model class, config dataclass)
    "dense_autoencoder": (DenseAutoencoder, AutoencoderConfig),
    "conv_autoencoder": (ConvAutoencoder, AutoencoderConfig),
    "overcomplete_autoencoder": (OvercompleteAutoencoder, OvercompleteConfig),
    "sparse_autoencoder": (SparseAutoencoder, SparseConfig),
    "denoising_autoencoder": (DenoisingAutoencoder, DenoisingConfig),
    "vae": (VAE, VAEConfig),
    # not an Autoencoder subclass, but the same detector contract (anomaly_score, config.input_shape), so
    # the exported `anomaly` folder, `deepgen score` and the pyfunc load it like the others
    "mae": (MaskedAutoencoderViT, MAEConfig),
}


def build_autoencoder(kind: str, config: AutoencoderConfig | dict[str, Any]) -> Autoencoder:
    model_cls, config_cls = AUTOENCODERS[kind]
    if isinstance(config, dict):  # JSON lists back to the dataclass's tuples
        config = config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    if type(config) is not config_cls:
        raise TypeError(f"{kind} needs a {config_cls.__name__}, got a {type(config).__name__}")
    return model_cls(config)
