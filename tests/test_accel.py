"""What makes the step fast on a GPU (deepgen.train.accel), in its CPU-testable parts: a compiled model
trains through the one loop and leaves plain checkpoints; bf16 autocast reaches every family's step while
its losses stay fp32; channels-last, fused optimizers and device-cached splits are no-ops on a CPU.

The compile test uses `train.compile_backend: aot_eager` (dynamo's tracing and AOT autograd, the parts
that wrap the model and rename its parameters, without inductor's C++ code generation, which takes
minutes on a shared 2-core machine); inductor itself runs in benchmarks/gpu.sh on the GPU."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import train_locally, write_pipeline

from deepgen.config import AUTOENCODER_KINDS, PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.tasks import build_task
from deepgen.train import accel
from deepgen.train.env import LocalEnv, tensor_batches
from deepgen.train.loop import STATE_FILE, autocast_context, batch_columns, evaluate, load_model_weights


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_compiled_model_trains_like_the_plain_one_and_leaves_plain_weights(tmp_path):
    import torch._dynamo

    # one batch per epoch: one graph for training and one for validation (each new batch size recompiles)
    path = write_pipeline(tmp_path / "p.yaml", model={"kind": "conv_autoencoder", "channels": [4], "latent_dim": 4},
                          train={"epochs": 2, "batch_size": 4096, "lr": 0.01})
    plain = PipelineSpec.from_yaml(path)
    compiled = PipelineSpec.from_yaml(path, ["train.compile=default", "train.compile_backend=aot_eager"])
    assert compiled.spec_hash() == plain.spec_hash()  # how fast it runs is not what it trains
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    plain_history, _, _ = train_locally(plain, tmp_path / "plain")
    history, env, manifest = train_locally(compiled, tmp_path / "compiled")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the loop did compile the model

    for a, b in zip(plain_history, history):  # tracing changes no arithmetic
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    state = torch.load(env.latest_checkpoint() / STATE_FILE, weights_only=True)
    keys = [*state["models"]["model"], *(k for g in state["optimizers"]["model"]["param_groups"] for k in g)]
    assert not any("_orig_mod" in str(k) for k in keys)
    # the checkpoint loads strictly into an uncompiled model, which gives the epoch's validation loss again
    task = build_task(compiled, manifest)
    models = load_model_weights(env.latest_checkpoint(), task, which="last")
    assert not isinstance(models["model"], torch._dynamo.eval_frame.OptimizedModule)
    val = evaluate(task, models, env, compiled.train.batch_size, contextlib.nullcontext(), batch_columns(task))
    assert val["val_loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-5)
    exported = task.export(tmp_path / "export", models, task.evaluate(models, compiled.data_dir))
    assert not any("_orig_mod" in k for k in torch.load(exported / "weights.pt", weights_only=True))


def test_yamls_bare_off_and_on_are_compile_modes(tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", train={"epochs": 1, "compile": False})  # what `compile: off` reads as
    assert PipelineSpec.from_yaml(path).train.compile == "off"
    assert PipelineSpec.from_yaml(path, ["train.compile=on"]).train.compile == "default"
    assert PipelineSpec.from_yaml(path, ["train.compile=max-autotune"]).train.compile == "max-autotune"


# --- bf16 in every family's step -------------------------------------------------------------------


def _text_data(root):
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("bcdfghklmnprst"), 4)) for _ in range(30)]
    docs = ["\n".join(" ".join(rng.choice(words, 5)) + "." for _ in range(4)) for _ in range(40)]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    pd.DataFrame({"text": [" ".join(rng.choice(words, 4)) for _ in range(80)],
                  "label": np.array(["a", "b"])[np.arange(80) % 2]}).to_csv(root / "labelled.csv", index=False)


TEXT = {"max_len": 16, "vocab_size": 120, "min_frequency": 1}
ENCODER = {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32}
FAMILIES = {
    "dense_autoencoder": ({"source": {"kind": "digits"}}, {"hidden": [16], "latent_dim": 4}),
    "conv_autoencoder": ({"source": {"kind": "digits"}}, {"channels": [4, 8], "latent_dim": 4}),
    "vae": ({"source": {"kind": "digits"}}, {"hidden": [16], "latent_dim": 4}),
    "unet": ({"source": {"kind": "shapes", "num_images": 40, "size": 16}}, {"base_channels": 4, "depth": 2}),
    "bert_pretrain": ({"source": {"kind": "text_files", "paths": ["{root}/corpus.txt"], "sentence_split": "lines"},
                       "text": TEXT}, ENCODER),
    "bert_classifier": ({"source": {"kind": "labelled_text", "path": "{root}/labelled.csv"}, "text": TEXT}, ENCODER),
    "dcgan": ({"source": {"kind": "digits"}, "resize": 16}, {"nz": 8, "ngf": 4, "ndf": 4}),
    "cgan": ({"source": {"kind": "digits"}, "resize": 16}, {"nz": 8, "ngf": 4, "ndf": 4, "num_classes": 10}),
    "lapgan": ({"source": {"kind": "digits"}, "resize": 16}, {"levels": 2, "ngf": 4, "ndf": 4}),
    "srgan": ({"source": {"kind": "digits"}, "resize": 16},
              {"scale": 2, "channels": 4, "num_blocks": 1, "ndf": 4, "feature_width": 4, "warmup_steps": 1}),
}


def _format(value, root):
    if isinstance(value, dict):
        return {k: _format(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_format(v, root) for v in value]
    return value.format(root=root) if isinstance(value, str) else value


@pytest.mark.parametrize("kind", FAMILIES)
def test_bf16_reaches_every_familys_step_and_its_losses_stay_fp32(tmp_path, kind):
    """The loop's autocast (train.precision bf16; auto on a GPU) runs the networks in bf16, and every loss
    the step reports is computed in fp32 (a bf16 loss loses the small differences training follows)."""
    _text_data(tmp_path)
    data, model = FAMILIES[kind]
    spec = PipelineSpec.from_yaml(write_pipeline(
        tmp_path / "p.yaml", data=_format(data, tmp_path), model={"kind": kind, **model},
        train={"epochs": 1, "batch_size": 16, "precision": "bf16"},
        anomaly={"anomalous_labels": [9]} if kind in AUTOENCODER_KINDS else {}))
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    task = build_task(spec, manifest)
    env = LocalEnv(spec.data_dir, spec.anomaly, tmp_path / "ckpt")
    models = task.build_models()
    optimizers = task.build_optimizers(models)
    dtypes = set()
    for m in models.values():
        for layer in m.modules():
            if isinstance(layer, (torch.nn.Linear, *accel.CONV_MODULES)):
                layer.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    batches = env.batches("train", 16, 1, batch_columns(task))
    for _ in range(2):  # srgan: its warm-up step, then the adversarial one
        with autocast_context(spec, env.device):
            out = task.train_step(models, optimizers, next(batches))
        assert torch.bfloat16 in dtypes
        losses = {k: v for k, v in out.items() if "loss" in k}
        assert losses and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in losses.values()), out


# --- no-ops on a CPU -------------------------------------------------------------------------------


def test_channels_last_and_fused_optimizers_are_cuda_only():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert accel.has_convs(conv) and not accel.has_convs(torch.nn.Linear(2, 2))
    accel.memory_format(conv, torch.device("cpu"))
    assert conv[0].weight.is_contiguous()  # NCHW as built
    x = torch.rand(2, 3, 5, 5)
    assert accel.conv_input(x) is x
    optimizers = {"a": torch.optim.AdamW(conv.parameters()), "s": torch.optim.SGD(conv.parameters(), lr=0.1)}
    optimizers["a"].param_groups[0]["fused"] = True  # as a checkpoint saved on a GPU would restore it
    accel.fuse_optimizers(optimizers, torch.device("cpu"))
    assert optimizers["a"].param_groups[0]["fused"] is None and not optimizers["s"].param_groups[0].get("fused")


def test_a_split_goes_to_the_gpu_only_where_it_fits_and_batches_keep_their_order():
    data = {"features": torch.rand(10, 3), "label": torch.arange(10)}
    assert accel.split_bytes(data) == 10 * 3 * 4 + 10 * 8
    assert accel.fits_on_device(100, 400) and not accel.fits_on_device(101, 400)
    assert accel.place_split(data, torch.device("cpu")) is data
    # the shuffle order depends on (seed, epoch) only, wherever the split lives
    first = [b["label"].tolist() for b in tensor_batches(data, 4, epoch=2, seed=1, shuffle=True,
                                                          device=torch.device("cpu"))]
    again = [b["label"].tolist() for b in tensor_batches(data, 4, epoch=2, seed=1, shuffle=True,
                                                          device=torch.device("cpu"))]
    assert first == again and sorted(sum(first, [])) == list(range(10))
