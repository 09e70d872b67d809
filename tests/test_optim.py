"""The loop's optimizer updates (deepgen.train.optim): warmup and decay, accumulation, clipping."""

import pytest
import torch

from deepgen.config import TrainSpec
from deepgen.errors import DataError
from deepgen.train.loop import train_batches
from deepgen.train.optim import Schedule, optimizer_steps


def schedule(rows: int, batch_size: int, epochs: int, workers: int = 1, **train) -> Schedule:
    """The schedule the loop builds for `rows` training rows on `workers` workers, lr 1."""
    t = TrainSpec(lr=1.0, batch_size=batch_size, epochs=epochs, **train)
    return Schedule(t, train_batches(rows, batch_size, workers))


def test_schedule_warms_up_decays_and_accumulates():
    s = schedule(rows=320, batch_size=10, epochs=1, warmup_fraction=0.25, lr_decay="linear",
                 grad_accum_steps=2)  # 32 batches -> 16 updates
    assert s.total == 16 and s.warmup == 4
    assert [round(s.lr_at(i), 3) for i in (0, 3, 4, 10, 16)] == [0.25, 1.0, 1.0, 0.5, 0.0]
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters())
    for _ in range(6):
        with s.micro_batch(model) as syncing:
            s.backward(model(torch.ones(1, 2)).sum())
        if syncing:
            s.step(model, opt)
    assert optimizer_steps(opt) == 3  # 6 batches, 2 per update
    cosine = schedule(rows=100, batch_size=10, epochs=1, lr_decay="cosine")
    assert cosine.lr_at(5) == pytest.approx(0.5)


def test_accumulation_windows_stay_inside_an_epoch_so_the_schedule_ends_on_the_last_update():
    m = {"lr_decay": "linear", "grad_accum_steps": 3}
    s = schedule(rows=70, batch_size=10, epochs=3, **m)  # 7 batches: 2 updates, 1 dropped
    assert s.total == 6
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters())
    lrs = []
    for _ in range(3):
        for _ in range(7):
            with s.micro_batch(model) as syncing:
                s.backward(model(torch.ones(1, 2)).sum())
            if syncing:
                s.step(model, opt)
                lrs.append(opt.param_groups[0]["lr"])
        assert model.weight.grad is not None  # the 7th batch's half-window ...
        s.end_epoch(opt)
        assert model.weight.grad is None  # ... is dropped, not carried into the next epoch
    assert optimizer_steps(opt) == 6 and lrs[-1] == pytest.approx(1 / 6) and min(lrs) > 0
    with pytest.raises(DataError, match=r"^train.grad_accum_steps: 8 batches per update, but an epoch has 7"):
        schedule(rows=70, batch_size=10, epochs=3, grad_accum_steps=8)
    # 65 rows in batches of 8: the loop skips the last batch of one row, so 8 batches, 2 updates an epoch
    assert schedule(rows=65, batch_size=8, epochs=3, **m).total == 6


def _accumulate_under_ddp(rank: int, folder: str) -> None:
    import json
    from pathlib import Path

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=1)
    model = DistributedDataParallel(torch.nn.Linear(2, 1))
    reduced = []

    def count(state, bucket):  # the gradient all-reduce DDP runs for a backward
        reduced.append(1)
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    model.register_comm_hook(None, count)
    s = schedule(rows=80, batch_size=10, epochs=1, grad_accum_steps=4)
    per_batch = []
    for _ in range(8):
        before = len(reduced)
        with s.micro_batch(model):
            s.backward(model(torch.ones(1, 2)).sum())
        per_batch.append(len(reduced) - before)
    Path(folder, "reduced.json").write_text(json.dumps(per_batch))
    dist.destroy_process_group()


def test_under_ddp_gradients_are_all_reduced_once_per_accumulation_window(tmp_path):
    """DDP decides in the forward pass whether a backward syncs: a no_sync around the backward alone
    still all-reduced every batch."""
    import json

    import torch.multiprocessing as mp

    mp.start_processes(_accumulate_under_ddp, args=(str(tmp_path),), nprocs=1, start_method="spawn")
    assert json.loads((tmp_path / "reduced.json").read_text()) == [0, 0, 0, 1, 0, 0, 0, 1]


def test_clipping_bounds_each_update_to_the_configured_gradient_norm():
    """SGD at learning rate 1: an update moves the weights by exactly the clipped gradient, norm 0.5."""
    model = torch.nn.Linear(4, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    s = schedule(rows=10, batch_size=10, epochs=1, clip_grad_norm=0.5)
    before = model.weight.detach().clone()
    with s.micro_batch(model) as syncing:
        s.backward(1000 * model(torch.ones(1, 4)).sum())  # gradient norm 2000
    assert syncing
    s.step(model, opt)
    assert (model.weight.detach() - before).norm().item() == pytest.approx(0.5, rel=1e-5)
