"""What makes a step fast on a GPU, decided here once for every family; the loop applies it.

- `compile_model`: `torch.compile` of each model (`train.compile`: off, default, max-autotune), once per
  worker, after DDP wrapping (PyTorch's DDPOptimizer then splits the graph at DDP's gradient buckets).
  Checkpoints and exports never see the wrapper: `deepgen.tasks.unwrap` strips `_orig_mod` as it strips DDP.
- `memory_format`: channels-last weights for conv nets on CUDA (cuDNN runs NHWC natively, and a conv whose
  weight is channels-last returns channels-last activations, so the layout propagates through the net).
- `fuse_optimizers`: Adam and AdamW step with their fused CUDA kernel (one launch for all parameters).
- `place_split`: an in-memory split (`train.cache_shards`, and every plain run) moves to the device once,
  where it fits, so batches are slices of a device tensor and no host-to-device copy waits in the step.

On a CPU, channels-last and fused optimizers are no-ops (the same numerics as before), so every CPU test and
run is unchanged; compile is whatever `train.compile` says on every device.
"""

from __future__ import annotations

import torch
from torch import nn

from deepgen.config import TrainSpec

CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)
FUSABLE = (torch.optim.Adam, torch.optim.AdamW)
# a split is kept on the GPU when it takes at most this share of the free memory (the rest is the model's,
# its activations' and the optimizer's)
DEVICE_CACHE_FRACTION = 0.25


def compile_model(model: nn.Module, train: TrainSpec) -> nn.Module:
    """`model` through torch.compile as `train.compile` and `train.compile_backend` say (off: as it is).
    The mode (default, max-autotune) is inductor's; the tracing-only backends take none."""
    if train.compile == "off":
        return model
    mode = train.compile if train.compile_backend == "inductor" and train.compile != "default" else None
    return torch.compile(model, mode=mode, backend=train.compile_backend)


def has_convs(model: nn.Module) -> bool:
    return any(isinstance(m, CONV_MODULES) for m in model.modules())


def memory_format(model: nn.Module, device: torch.device) -> nn.Module:
    """Conv nets channels-last on CUDA; everything else (and everything on a CPU) as it is."""
    if device.type == "cuda" and has_convs(model):
        return model.to(memory_format=torch.channels_last)
    return model


def conv_input(x: torch.Tensor) -> torch.Tensor:
    """An image batch (B, C, H, W) in the layout `memory_format` gives conv nets on its device."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def fuse_optimizers(optimizers: dict[str, torch.optim.Optimizer], device: torch.device) -> None:
    """Adam and AdamW use their fused kernel on CUDA and the default implementation elsewhere. Set on
    the parameter groups, where the optimizer reads it at each step, so it also holds after a checkpoint
    from another device is loaded (whose groups carry that device's choice): call it after loading."""
    fused = device.type == "cuda"
    for opt in optimizers.values():
        if type(opt) not in FUSABLE:
            continue
        if fused and not all(p.is_cuda and p.is_floating_point() for g in opt.param_groups for p in g["params"]):
            continue  # fused needs every parameter on the GPU
        for group in opt.param_groups:
            group["fused"], group["foreach"] = (True, False) if fused else (None, None)
        opt._step_supports_amp_scaling = fused  # what the constructor sets with fused=True (for GradScaler)


def split_bytes(data: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in data.values())


def fits_on_device(nbytes: int, free_bytes: int) -> bool:
    return nbytes <= DEVICE_CACHE_FRACTION * free_bytes


def place_split(data: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """An in-memory split where its batches will be sliced from: on the GPU when it fits
    (`DEVICE_CACHE_FRACTION` of the free memory), else on the host (each batch copied as it is drawn)."""
    if device.type != "cuda" or not fits_on_device(split_bytes(data), torch.cuda.mem_get_info(device)[0]):
        return data
    return {k: v.to(device) for k, v in data.items()}
