"""The training loop without Ray: what a GPU benchmark or a laptop run uses."""

from pathlib import Path

import numpy as np
import pytest
from helpers import write_pipeline

from deepgen.config import PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.errors import TrainingError
from deepgen.train.env import LocalEnv
from deepgen.train.loop import train_loop


def _setup(tmp_path, **overrides):
    sets = [f"{k}={v}" for k, v in overrides.items()]
    spec = PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml"), sets)
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    return spec, manifest


def _env(spec, root):
    return LocalEnv(spec.data_dir, spec.anomaly, root, keep=spec.train.checkpoints_to_keep, seed=spec.train.seed)


def test_trains_on_normal_rows_only_and_lowers_the_loss(tmp_path):
    spec, manifest = _setup(tmp_path, **{"train.epochs": 4, "train.lr": 0.01})
    env = _env(spec, tmp_path / "ckpt")
    assert env.num_rows("train") == manifest.rows["train"] - _nines(spec)  # the 9s are left out
    history = train_loop(spec, manifest, env)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert len(list((tmp_path / "ckpt").glob("checkpoint_*"))) == spec.train.checkpoints_to_keep


def _nines(spec):
    from deepgen.data.dataset import load_split

    _, labels = load_split(spec.data_dir, "train")
    return int((labels == 9).sum())


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(tmp_path):
    spec4, manifest = _setup(tmp_path, **{"train.epochs": 4})
    uninterrupted = train_loop(spec4, manifest, _env(spec4, tmp_path / "a"))

    def stop_after_epoch_2(metrics):  # the process dies once epoch 2's checkpoint is written
        if metrics["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_loop(spec4, manifest, _env(spec4, tmp_path / "b"), on_epoch=stop_after_epoch_2)
    resumed = train_loop(spec4, manifest, _env(spec4, tmp_path / "b"))  # same checkpoint folder: resume

    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4]
    for a, b in zip(uninterrupted, resumed):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6)


def test_divergence_stops_with_a_clear_message(tmp_path):
    spec, manifest = _setup(tmp_path, **{"train.lr": 1e30, "model.loss": "mse"})
    with pytest.raises(TrainingError, match="training diverged at epoch 1"):
        train_loop(spec, manifest, _env(spec, tmp_path / "c"))


def test_each_rank_resumes_with_its_own_random_state(tmp_path):
    import torch

    from deepgen.train.loop import RANK_RNG_FILE, load_checkpoint, rng_state, save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(0)
    save_checkpoint(tmp_path, {"m": model}, {"m": opt}, epoch=3, history=[])  # rank 0's state
    rank0_next = torch.rand(4)
    torch.manual_seed(1)
    torch.save(rng_state(), tmp_path / RANK_RNG_FILE.format(rank=1))  # rank 1's own
    rank1_next = torch.rand(4)
    for rank, expected in ((0, rank0_next), (1, rank1_next)):
        torch.manual_seed(99)
        assert load_checkpoint(tmp_path, {"m": model}, {"m": opt}, rank=rank)[0] == 3
        assert torch.equal(torch.rand(4), expected), rank  # the draws it would have made next


def test_validation_means_are_per_row_except_a_tasks_ratio_metrics():
    import contextlib

    import torch

    from deepgen.train.env import LocalEnv
    from deepgen.train.loop import evaluate

    class Counting:  # two val batches: 2 rows with 1 masked token (right), 1 row with 3 (all wrong)
        ratio_metrics = {"accuracy": ("correct", "count")}

        def eval_step(self, models, batch):
            n = len(batch["x"])
            assert n
            return {"loss": batch["x"].sum(), "correct": batch["correct"].sum(), "count": batch["count"].sum()}

    class TwoBatches(LocalEnv):
        def __init__(self):
            self.device = torch.device("cpu")

        def batches(self, split, batch_size, epoch, columns):
            ones = torch.tensor([1.0, 1.0])
            yield {"x": ones, "correct": ones, "count": ones}
            yield {"x": torch.tensor([4.0]), "correct": torch.tensor([0.0]), "count": torch.tensor([3.0])}

    out = evaluate(Counting(), {}, TwoBatches(), 2, contextlib.nullcontext(), ("x",))
    assert out == {"val_loss": 2.0, "val_accuracy": 0.4}  # rows: 6 / 3; tokens: 2 right of 5, not (1 + 0) / 2


def test_training_sums_a_tasks_counts_as_they_are_and_weights_its_means_by_rows():
    from deepgen.train.loop import means, summed_keys

    class Masked:
        ratio_metrics = {"mlm_loss": ("mlm_loss_sum", "mlm_count")}

    task = Masked()
    assert summed_keys(task) == {"tokens", "mlm_loss_sum", "mlm_count"}
    # two batches: 2 rows with 36 masked tokens at loss 1, 2 rows with 4 at loss 3 (the loop's sums)
    sums = {"loss": 2 * 1.0 + 2 * 3.0, "mlm_loss_sum": 36 * 1.0 + 4 * 3.0, "mlm_count": 40.0, "tokens": 99.0}
    assert means(task, sums, rows=4) == {"loss": 2.0, "mlm_loss": 1.2}  # per token, not (1 + 3) / 2


@pytest.mark.parametrize("rows, batch_size, workers, batches", [
    (64, 8, 1, 8), (65, 8, 1, 8), (66, 8, 1, 9), (65, 8, 2, 4), (66, 8, 2, 4), (1, 8, 1, 1),
])
def test_the_batches_an_epoch_trains_on_follow_equal_shards_and_the_skipped_single_row(rows, batch_size, workers,
                                                                                       batches):
    import torch

    from deepgen.train.env import tensor_batches
    from deepgen.train.loop import train_batches

    assert train_batches(rows, batch_size, workers) == batches
    shard = {"x": torch.zeros(rows // workers)}  # Ray Train's equal shard of one worker
    seen = [len(b["x"]) for b in tensor_batches(shard, batch_size, 1, 0, True, torch.device("cpu"))]
    assert len([n for i, n in enumerate(seen) if not (n == 1 and i)]) == batches  # the loop's skip rule


def test_a_plain_run_killed_while_writing_a_checkpoint_resumes_from_the_last_whole_one(tmp_path, monkeypatch):
    import shutil

    from deepgen.train import env as env_module

    spec = PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml"))
    prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.pt").write_bytes(b"whole")
    env = LocalEnv(spec.data_dir, spec.anomaly, tmp_path / "ckpt", seed=0)
    env.report({"epoch": 1}, tmp_path / "state")

    def torn_copy(src, dst, **kwargs):  # the process dies after writing part of the new checkpoint
        Path(dst).mkdir(parents=True)
        (Path(dst) / "state.pt").write_bytes(b"who")
        raise KeyboardInterrupt

    monkeypatch.setattr(env_module.shutil, "copytree", torn_copy)
    with pytest.raises(KeyboardInterrupt):
        env.report({"epoch": 2}, tmp_path / "state")
    monkeypatch.setattr(env_module.shutil, "copytree", shutil.copytree)
    assert env.latest_checkpoint().name == "checkpoint_000001"
    assert (env.latest_checkpoint() / "state.pt").read_bytes() == b"whole"


def test_the_best_validation_epoch_is_kept_and_patience_stops_training(tmp_path):
    """A learning rate far too high makes val_loss jump after the first epochs: training stops `patience`
    epochs after the best one, and the evaluated weights are that epoch's, not the last's."""
    from deepgen.tasks import build_task
    from deepgen.train.loop import load_model_weights

    spec, manifest = _setup(tmp_path, **{"train.epochs": 30, "train.patience": 2, "train.lr": 0.05,
                                         "model.loss": "mse"})
    env = _env(spec, tmp_path / "ckpt")
    history = train_loop(spec, manifest, env)
    best = min(history, key=lambda h: h["val_loss"])
    assert len(history) < 30 and history[-1]["epoch"] == best["epoch"] + 2
    assert all(h["best_epoch"] == min(history[:i + 1], key=lambda e: e["val_loss"])["epoch"]
               for i, h in enumerate(history))
    task = build_task(spec, manifest)
    kept = load_model_weights(env.latest_checkpoint(), task)["model"]
    last = load_model_weights(env.latest_checkpoint(), task, which="last")["model"]
    import torch

    from deepgen.data.dataset import load_split, normal_mask

    x, y = load_split(spec.data_dir, "val")
    x = torch.tensor(x[normal_mask(y, spec.anomaly, len(x))])
    with torch.no_grad():
        kept_loss = kept.objective(x, kept(x))["loss"].item()
        last_loss = last.objective(x, last(x))["loss"].item()
    assert kept_loss == pytest.approx(best["val_loss"], rel=1e-4) and kept_loss < last_loss
    # a rerun of the stopped run resumes into the same decision: no further epoch
    again = train_loop(spec, manifest, _env(spec, tmp_path / "ckpt"))
    assert [h["epoch"] for h in again] == [h["epoch"] for h in history]


def test_validation_loss_is_measured_on_normal_rows_only(tmp_path):
    spec, manifest = _setup(tmp_path)
    env = _env(spec, tmp_path / "ckpt")
    from deepgen.data.dataset import load_split

    _, labels = load_split(spec.data_dir, "val")
    rows = sum(len(b["features"]) for b in env.batches("val", 64, 0))
    assert 9 in labels and rows == int((labels != 9).sum())


def test_a_monitor_the_model_does_not_report_is_one_line(tmp_path):
    spec, manifest = _setup(tmp_path, **{"train.monitor": "val_accuracy"})
    with pytest.raises(TrainingError, match=r"^train.monitor: 'val_accuracy' is not a metric of this model; "
                                            r"it reports val_loss"):
        train_loop(spec, manifest, _env(spec, tmp_path / "m"))


def test_warmup_and_cosine_decay_reach_every_family_through_the_loop(tmp_path):
    """The autoencoder's optimizer follows the spec's schedule: its last update ran at a learning rate near
    0 (cosine to the end). Clipping itself: tests/test_optim.py."""
    import torch

    from deepgen.train.loop import STATE_FILE

    spec, manifest = _setup(tmp_path, **{"train.epochs": 3, "train.lr": 0.01, "train.warmup_fraction": 0.2,
                                         "train.lr_decay": "cosine", "train.clip_grad_norm": 0.5})
    env = _env(spec, tmp_path / "s")
    train_loop(spec, manifest, env)
    state = torch.load(env.latest_checkpoint() / STATE_FILE, weights_only=True)
    last_lr = state["optimizers"]["model"]["param_groups"][0]["lr"]
    assert 0 < last_lr < 0.01 * 0.01


def test_an_epoch_checkpointed_but_not_logged_before_a_crash_is_logged_on_resume(tmp_path):
    from mlflow.tracking import MlflowClient

    from deepgen.tracking import EpochLogger

    spec, manifest = _setup(tmp_path, **{"train.epochs": 4})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    run_id = c.create_run(c.create_experiment("t")).info.run_id
    logger = EpochLogger(run_id, uri)

    def dies_before_logging_epoch_2(metrics):  # its checkpoint is written, its metrics are not
        if metrics["epoch"] == 2:
            raise KeyboardInterrupt
        logger(metrics)

    with pytest.raises(KeyboardInterrupt):
        train_loop(spec, manifest, _env(spec, tmp_path / "ckpt"), on_epoch=dies_before_logging_epoch_2)
    train_loop(spec, manifest, _env(spec, tmp_path / "ckpt"), on_epoch=EpochLogger(run_id, uri))  # resumes after 2
    history = c.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]  # each epoch once, epoch 2 too
    assert "ended_at" not in c.get_run(run_id).data.metrics


def test_an_image_autoencoder_logs_its_reconstructions_every_few_epochs(tmp_path, monkeypatch):
    """The run page shows an autoencoder learning: the same validation images and their reconstructions every
    tracking.figures_every epochs and at the last, each picture with its epoch as the step."""
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from deepgen.config import PipelineSpec
    from deepgen.data.dataset import load_split
    from deepgen.data.prepare import prepare_dataset
    from deepgen.tracking import EpochLogger
    from deepgen.train.env import LocalEnv
    from deepgen.train.loop import train_loop

    path = write_pipeline(tmp_path / "p.yaml", train={"epochs": 5, "batch_size": 64},
                          tracking={"runs_dir": str(tmp_path / "runs"), "figures_every": 2})
    spec = PipelineSpec.from_yaml(path)
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # nothing may land in the user's working folder (an old ./mlruns did once)
    c = MlflowClient(uri)
    run_id = c.create_run(c.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())).info.run_id
    train_loop(spec, manifest, LocalEnv(spec.data_dir, spec.anomaly, tmp_path / "ckpt", seed=0),
               on_epoch=EpochLogger(run_id, uri))
    pictures = sorted(a.path for a in c.list_artifacts(run_id, "images")
                      if "reconstructions" in a.path and a.path.endswith(".png"))
    assert [next(s for s in (2, 4, 5) if f"+step+{s}+" in p) for p in pictures] == [2, 4, 5], pictures
    grid = np.asarray(Image.open(c.download_artifacts(run_id, pictures[-1], str(tmp_path))))
    _, h, w = manifest.shape
    assert grid.shape == (2 * h, 8 * w)  # top row the inputs, bottom row their reconstructions
    x_val = load_split(spec.data_dir, "val")[0][:8].reshape(8, h, w)
    top = np.concatenate(list(x_val), axis=1)
    assert np.abs(grid[:h].astype(float) / 255 - top).max() <= 1 / 255  # the same validation images each time
    assert not (tmp_path / "mlruns").exists()  # the pictures went to the run's artifact store only
