"""Optimizer updates with warmup and decay, gradient accumulation and clipping, from `train:` in the spec.

The loop tells the task how many batches each worker trains on per epoch (`Task.set_batches_per_epoch`);
a ScheduledTask builds its one `Schedule` of the run from it, and its `train_step` runs each batch through it:

    with schedule.micro_batch(model) as syncing:   # DDP skips the all-reduce on accumulating batches
        loss = ...
        schedule.backward(loss)                    # loss / grad_accum_steps
    if syncing:
        schedule.step(model, optimizer)            # clip, set the learning rate, step, zero the gradients

The learning rate follows the optimizer's own update count (in its state, so a checkpoint carries it):
a resumed run continues the schedule where it stopped.
"""

from __future__ import annotations

import contextlib
import math

import torch

from deepgen.config import TrainSpec
from deepgen.errors import DataError
from deepgen.tasks import Task


class Schedule:
    """An accumulation window never spans two epochs: an epoch's last (batches mod grad_accum_steps) batches
    are dropped (`end_epoch`), so every epoch makes the same number of updates, the learning rate reaches
    its end exactly at the last one, and a run resumed at an epoch boundary repeats an uninterrupted one.
    """

    def __init__(self, train: TrainSpec, batches_per_epoch: int | None = None):
        """`batches_per_epoch`: per worker, as the loop runs them; None (a task used outside the loop)
        counts one update per epoch."""
        if batches_per_epoch is None:
            batches_per_epoch = train.grad_accum_steps
        if batches_per_epoch < train.grad_accum_steps:
            raise DataError(f"train.grad_accum_steps: {train.grad_accum_steps} batches per update, but an epoch "
                            f"has {batches_per_epoch} per worker; lower it or train.batch_size")
        self.t = train
        self.total = max(1, batches_per_epoch // train.grad_accum_steps * train.epochs)
        self.warmup = int(train.warmup_fraction * self.total)
        self.micro = 0
        self.updates: int | None = None  # read from the optimizer once (a resumed run's), then counted here

    def lr_at(self, step: int) -> float:
        return self.t.lr * self.factor(step)

    def factor(self, step: int) -> float:
        """The learning rate at update `step` over the peak: the warmup's ramp, then the decay's curve."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        decay = {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)), "constant": 1.0}
        return decay[self.t.lr_decay]

    def follow(self, optimizers, step: int) -> None:
        """Each param group of `optimizers` at its own starting rate (kept as "initial_lr", as torch's
        schedulers keep it, and checkpointed with the optimizer) times factor(step): for the tasks whose
        models keep learning rates of their own (a GAN's G and D, model.lr_g and model.lr_d)."""
        f = self.factor(step)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * f

    @contextlib.contextmanager
    def micro_batch(self, model):
        """The block runs one batch's forward and `backward`; it yields whether this batch ends a window.
        On the batches that only accumulate, DDP skips its gradient all-reduce: it decides that in the
        forward pass, so the forward must run inside `no_sync` too, not only the backward."""
        self.micro += 1
        syncing = self.micro % self.t.grad_accum_steps == 0
        with contextlib.nullcontext() if syncing or not hasattr(model, "no_sync") else model.no_sync():
            yield syncing

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.t.grad_accum_steps).backward()

    def end_epoch(self, optimizer) -> None:
        """Drop a window the epoch's last batches left unfinished (their gradients were never synced)."""
        if self.micro % self.t.grad_accum_steps:
            optimizer.zero_grad(set_to_none=True)
        self.micro = 0

    def step(self, model, optimizer) -> None:
        if self.t.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.t.clip_grad_norm)
        if self.updates is None:  # fused AdamW keeps its step count on the GPU: one read, not one per update
            self.updates = optimizer_steps(optimizer)
        lr = self.lr_at(self.updates)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # a group's own factor (BERT's layer-wise decay)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.updates += 1


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """Updates the optimizer has made (kept in its state, so checkpoints carry it)."""
    for state in optimizer.state.values():
        if "step" in state:
            return int(state["step"])
    return 0


class ScheduledTask(Task):
    """For a task with one model and one optimizer (`models["model"]`, `optimizers["model"]`): the loop's
    schedule drives every update. `self.spec` is the task's PipelineSpec."""

    schedule: Schedule | None = None

    def set_batches_per_epoch(self, batches: int) -> None:
        """Warmup, decay, accumulation and clipping, sized to this run's batches."""
        self.schedule = Schedule(self.spec.train, batches)

    def updates(self) -> Schedule:
        if self.schedule is None:  # a task stepped outside the loop (tests, benchmarks)
            self.schedule = Schedule(self.spec.train)
        return self.schedule

    def update(self, models, optimizers, forward, loss_of=lambda out: out["loss"]):
        """Run `forward()` as one batch of an update and backpropagate `loss_of` its result (by default its
        "loss" term); the optimizer steps when the batch ends an accumulation window. Returns the result."""
        model, schedule = models["model"], self.updates()
        with schedule.micro_batch(model) as syncing:
            out = forward()
            schedule.backward(loss_of(out))
        if syncing:
            schedule.step(model, optimizers["model"])
        return out

    def end_epoch(self, models, optimizers) -> None:
        self.updates().end_epoch(optimizers["model"])
