"""GANs as a task: a generator and a discriminator trained against each other, one update of each per batch;
judged on the test split by the Frechet distance between real and generated images in the feature space of
a classifier trained on the train split (and, for a conditional GAN, that classifier's accuracy on samples
of each label). SRGAN is a task of its own on this one's base: deepgen.tasks.srgan.

Batch contract: batch["features"] (B, C*H*W) float32 in [0, 1] (manifest.shape = [C, H, W]), rescaled here to
[-1, 1] for the generators' tanh; batch["label"] (B,) int64 where the data has labels (cgan needs them).

Failure rule (DivergenceGuard): training stops with a TrainingError when, at any step, the discriminator or
generator loss is NaN or infinite (diverged), or when the discriminator loss stays below `collapse_d_loss`
(1e-4: D(x) > 0.9999 on real and < 1e-4 on generated images) for `collapse_patience` consecutive steps (D wins
completely and G learns nothing more). For LAPGAN every level's discriminator is watched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deepgen import plots
from deepgen.config import GAN_KINDS, AdversarialSpec, CGANSpec, DCGANSpec, GanSpec, LapGANSpec, SRGANSpec  # noqa: F401  (re-exported)
from deepgen.data.dataset import sample_rows, split_rows, take_rows
from deepgen.data.manifest import Manifest
from deepgen.errors import DataError, TrainingError
from deepgen.export import load_weights, read_meta, save_model_dir
from deepgen.metrics import images as metrics
from deepgen.metrics import judge as judges
from deepgen.models import gans
from deepgen.serving import Predictor
from deepgen.tasks import Evaluation, Task, unwrap
from deepgen.train import accel
from deepgen.train.optim import Schedule

GAN_SPECS = (GanSpec, DCGANSpec, CGANSpec, LapGANSpec, SRGANSpec)

# --- evaluation protocol ---------------------------------------------------------------------------

FID_SAMPLES = 1000  # N = min(test rows, this) real test images against N generated ones
# Each distance is the mean over this many draws of N generated images, and the floor over as many draws of N
# train images: one draw's floor moved threefold within one MNIST-5k split (0.09 to 0.27 over ten draws;
# their means over three splits 0.165, 0.181, 0.168), so a single draw made the ratio a lottery.
FID_DRAWS = 10
WATCH_SAMPLES = 500  # validation images of the Frechet distance logged while training (model.watch_every)
SEED = 0  # the judge (the feature classifier) and its cache: deepgen.metrics.judge


def gan_config(m, shape: tuple[int, int, int]):
    """The model config dataclass of a GAN spec (raises ValueError for image sizes it cannot take)."""
    labels = {"num_classes": getattr(m, "num_classes", 0), "embed_dim": getattr(m, "embed_dim", 16)}
    if m.kind == "gan" or (m.kind == "cgan" and m.architecture == "mlp"):
        return gans.GANConfig(shape, m.nz, tuple(m.hidden), **labels)
    if m.kind in ("dcgan", "cgan"):
        conditioning = getattr(m, "conditioning", "concat")
        return gans.DCGANConfig(shape, m.nz, m.ngf, m.ndf, **labels, projection=conditioning == "projection",
                                auxiliary=conditioning == "acgan",
                                extra_class=getattr(m, "aux_generated", "") == "extra_class")
    if m.kind == "lapgan":
        return gans.LapGANConfig(shape, m.levels, m.nz, tuple(m.hidden), m.ngf, m.ndf)
    raise ValueError(f"not a GAN kind: {m.kind}")


class DivergenceGuard:
    """The failure rule in the module docstring. Losses are read one step late: the host then waits for a
    step the device has (nearly) finished while the next one is queued, instead of draining the queue
    with a sync every step."""

    def __init__(self, name: str, collapse_d_loss: float, patience: int):
        self.name, self.threshold, self.patience = name, collapse_d_loss, patience
        self.step, self.low_steps = 0, 0
        self._pending: tuple[int, torch.Tensor | None, torch.Tensor] | None = None
        self.all_reduce, self.world_size = None, 1  # set by GanTask.share_losses under DDP

    def observe(self, d_loss: torch.Tensor | None, g_loss: torch.Tensor) -> None:
        """d_loss: the watched discriminator loss(es) of this step (None when D did not train), g_loss: G's."""
        self.step += 1
        pending = self._pending
        self._pending = (self.step, None if d_loss is None else d_loss.detach().reshape(-1), g_loss.detach())
        if pending is not None:
            self.check(*pending)

    def flush(self) -> None:
        if self._pending is not None:
            self.check(*self._pending)
            self._pending = None

    def check(self, step: int, d_loss: torch.Tensor | None, g_loss: torch.Tensor) -> None:
        values = torch.cat([g_loss.float().reshape(1), *([] if d_loss is None else [d_loss.float()])])
        if self.all_reduce is not None and self.world_size > 1:  # the mean over ranks: all ranks decide alike
            values = self.all_reduce(values) / self.world_size
        g, *d = values.cpu().tolist()  # one host read per step
        if not all(np.isfinite([*d, g])):
            raise TrainingError(f"{self.name}: GAN training diverged at step {step} (d_loss {d}, g_loss {g}); "
                                "lower model.lr_g / model.lr_d or check the input scaling")
        if d and self.threshold > 0 and min(d) < self.threshold:
            self.low_steps += 1
            if self.low_steps >= self.patience:
                raise TrainingError(
                    f"{self.name}: the discriminator won completely at step {step}: d_loss {min(d):.2e} < "
                    f"{self.threshold:g} for {self.low_steps} consecutive steps, so G gets no useful gradient; "
                    "lower model.lr_d, raise model.lr_g, or use model.loss non_saturating")
        else:
            self.low_steps = 0


@dataclass
class _Pass:
    """One adversarial forward: D's logits on real and generated data and the generated batch."""

    fake: torch.Tensor | list[torch.Tensor]
    real_logits: torch.Tensor
    fake_logits: torch.Tensor
    aux_loss: torch.Tensor | None = None  # AC-GAN: D's class term (real batch, and generated by aux_generated)


class GanTask(Task):
    # D sees the real and the generated batch in two forwards before one backward. DDP's default buffer
    # broadcast rewrites batch norm's running statistics in place at every forward, which cuDNN's batch
    # norm backward then refuses (pytorch/pytorch issues 22095, 175024): each rank keeps its own instead.
    ddp_options = {"broadcast_buffers": False}
    # No validation loss says which epoch of a minimax game is best; the Frechet distance of validation
    # images does (every model.watch_every epochs and at the last): the epoch that measured best is the
    # model (train.keep: last for the last epoch). A long run's samples can get worse late: the cGAN on
    # MNIST-5k read 10.4x the floor at 810 updates and 17.4x at 2,125 (benchmarks/README.md, GANs).
    monitor = ("val_frechet_distance", "min")
    periodic_metrics = ("val_frechet_distance",)

    def __init__(self, spec, manifest: Manifest):
        m = spec.model
        self.spec, self.manifest, self.kind = spec, manifest, m.kind
        if len(manifest.shape) != 3:
            raise DataError(f"{spec.name}: model.kind {m.kind} needs image rows (C, H, W), "
                            f"got shape {manifest.shape}")
        self.shape = tuple(manifest.shape)
        if m.kind == "cgan" and manifest.label_type != "int":
            raise DataError(f"{spec.name}: model.kind cgan needs integer labels 0..{m.num_classes - 1} "
                            "in the data")
        try:
            self.config = self.make_config(m, self.shape)
        except ValueError as e:
            raise DataError(f"{spec.name}: {e}") from None
        self.guard = DivergenceGuard(spec.name, m.collapse_d_loss, m.collapse_patience)
        self._last_r1: torch.Tensor | None = None  # the R1 penalty of the last D update that computed it
        # the loop's batches: images, and their labels where a label conditions the networks
        self.batch_columns = ("features", "label") if m.kind == "cgan" else ("features",)

    # -- the Task's hooks -- #

    def end_epoch(self, models, optimizers) -> None:
        """The guard reads losses one step late; the epoch's last step is checked before its checkpoint."""
        self.guard.flush()

    def share_losses(self, all_reduce, world_size: int) -> None:
        """Under DDP the divergence guard judges the mean loss over ranks, so every rank stops together."""
        self.guard.all_reduce, self.guard.world_size = all_reduce, world_size

    schedule: Schedule | None = None

    def set_batches_per_epoch(self, batches: int) -> None:
        """train.warmup_fraction and train.lr_decay, sized to the run: one G update per batch."""
        self.schedule = Schedule(self.spec.train.model_copy(update={"grad_accum_steps": 1}), batches)

    def _follow_schedule(self, optimizers) -> None:
        """Before a batch's updates: every optimizer's rate (model.lr_g, model.lr_d, ...) times the schedule's
        factor at G's update count. Nothing to do at a constant rate (the default)."""
        t = getattr(self.spec, "train", None)  # None: a task built from a model spec alone (tests, benchmarks)
        if t is None or (t.lr_decay == "constant" and not t.warmup_fraction):
            return
        if self.schedule is None:  # stepped outside the loop: one update per epoch, as ScheduledTask counts
            self.set_batches_per_epoch(1)
        self.schedule.follow(optimizers.values(), _updates(optimizers["generator"]))

    make_config = staticmethod(gan_config)

    def build_models(self):
        c, k = self.config, self.kind
        if k == "lapgan":
            models = {"generator": gans.LapGANGenerator(c), "discriminator": gans.LapGANDiscriminator(c)}
        elif isinstance(c, gans.DCGANConfig):
            models = {"generator": gans.DCGANGenerator(c), "discriminator": gans.DCGANDiscriminator(c)}
        else:
            models = {"generator": gans.MLPGenerator(c), "discriminator": gans.MLPDiscriminator(c)}
        models |= self._stabilisers(models)
        return models  # channels-last on CUDA: the loop's (deepgen.train.accel.memory_format)

    def _stabilisers(self, models) -> dict:
        """model.spectral_norm: D's weights spectrally normalised (in place). model.ema_decay > 0: a copy of G,
        "generator_ema", the moving average that evaluation and export use. It is checkpointed with the
        other models but has no optimizer, and it is never run through its DDP wrapper (it is read and
        written unwrapped), so its parameters keep requires_grad only so that DDP accepts the module."""
        m = self.spec.model
        if getattr(m, "spectral_norm", False):
            gans.spectral_normalise(models["discriminator"])
        if getattr(m, "ema_decay", 0) > 0:
            return {"generator_ema": copy.deepcopy(models["generator"])}
        return {}

    def sampler(self, models):
        """The generator that samples for evaluation and export: G's moving average when kept (its batch-norm
        statistics re-estimated on its own samples: gans.standing_statistics), else G."""
        if "generator_ema" in models:
            return gans.standing_statistics(unwrap(models["generator_ema"]))
        return unwrap(models["generator"])

    def build_optimizers(self, models):
        m = self.spec.model
        betas = tuple(m.betas)
        opts = {"generator": torch.optim.Adam(models["generator"].parameters(), lr=m.lr_g, betas=betas),
                "discriminator": torch.optim.Adam(models["discriminator"].parameters(), lr=m.lr_d, betas=betas)}
        return opts

    def train_step(self, models, optimizers, batch):
        G, D = models["generator"], self._seen_through_augment(models["discriminator"])
        m = self.spec.model
        self._follow_schedule(optimizers)
        real, cond = self._real_and_condition(batch)

        # (1) Update D: maximize log D(x) + log(1 - D(G(z))), as minimising BCE(D(x), 1) + BCE(D(G(z)), 0),
        #     d_steps times with fresh z; G(z) is detached, so only D learns here
        #     AC-GAN (conditioning acgan) adds aux_weight * CE(C(x), y) on the real batch: D learns the labels
        #     (and, by model.aux_generated, CE(C(G(z, y)), y) or CE(C(G(z, y)), K) on the generated one)
        #     R1 (model.r1_gamma) adds gamma / 2 * E||grad_x D(x)||^2 on the real batch; lazily (model.r1_every
        #     = k), on every k-th D update only, weighted k times (StyleGAN2's lazy regularisation)
        #     Mode seeking (model.mode_seeking) asks G's batch for pairs (i, i + B/2) of one label and two z
        r1_gamma, seeking = getattr(m, "r1_gamma", 0.0), getattr(m, "mode_seeking", 0.0)
        r1_every = getattr(m, "r1_every", 1)
        fake_cond = gans.paired_labels(cond) if seeking and cond is not None else cond
        for i in range(m.d_steps):
            with torch.set_grad_enabled(i == m.d_steps - 1):  # only the last G(z) is reused, for step (2)
                z = self._noise(batch)
                fake = G(z, fake_cond)
            lazy_r1 = bool(r1_gamma) and (_updates(optimizers["discriminator"]) % r1_every == 0
                                          or self._last_r1 is None)  # and on a (resumed) run's first step
            seen = _requiring_grad(real) if lazy_r1 else real
            p = self._d_pass(D, seen, fake, cond, fake_cond)
            d_loss = gans.discriminator_loss(p.real_logits, p.fake_logits, m.loss)
            if p.aux_loss is not None:
                d_loss = d_loss + m.aux_weight * p.aux_loss
            if lazy_r1:
                r1 = gans.r1_penalty(p.real_logits, seen)
                d_loss = d_loss + r1_gamma * r1_every / 2 * r1
                self._last_r1 = r1.detach()
            optimizers["discriminator"].zero_grad(set_to_none=True)
            d_loss.backward()
            optimizers["discriminator"].step()

        # (2) Update G: non_saturating maximizes log D(G(z)) (minimise BCE(D(G(z)), 1)); minimax minimizes
        #     log(1 - D(G(z))); hinge minimises -D(G(z)). Through the D just updated, on the G(z) of its last
        #     update. AC-GAN adds aux_weight * CE(C(G(z, y)), y): G draws what D's class head reads as y.
        #     Mode seeking adds mode_seeking / (|G(z1, y) - G(z2, y)| / |z1 - z2|): different z, different images.
        if p.aux_loss is not None:
            fake_logits, fake_classes = D(p.fake, None, classes=True)
            g_aux = gans.auxiliary_loss(fake_classes, fake_cond)
            g_loss = gans.generator_loss(fake_logits, m.loss) + m.aux_weight * g_aux
        else:
            g_loss = gans.generator_loss(D(p.fake, fake_cond), m.loss)
        if seeking:
            spread = gans.mode_seeking_ratio(p.fake, z)
            g_loss = g_loss + seeking / (spread + 1e-5)
        optimizers["generator"].zero_grad(set_to_none=True)
        g_loss.backward()
        optimizers["generator"].step()
        # (3) theta_ema <- beta theta_ema + (1 - beta) theta (model.ema_decay)
        if "generator_ema" in models:
            gans.ema_update(unwrap(models["generator_ema"]), unwrap(G), m.ema_decay,
                            _updates(optimizers["generator"]))

        out = self._report(p, d_loss, g_loss)
        self.guard.observe(out.get("d_loss_levels", out["d_loss"]), g_loss)
        out.pop("d_loss_levels", None)
        if p.aux_loss is not None:  # the class terms: D's on real images, G's on its own
            out |= {"d_aux_loss": p.aux_loss.detach(), "g_aux_loss": g_aux.detach()}
        if r1_gamma:  # the last one measured: every step logs it, so the epoch's mean is not diluted
            out["r1_penalty"] = self._last_r1
        if seeking:
            out["mode_spread"] = spread.detach()
        return out

    def _seen_through_augment(self, D):
        """D, or D of DiffAugment's transforms of what it is shown (model.diff_augment; training only)."""
        policy = getattr(self.spec.model, "diff_augment", [])
        if not policy:
            return D

        def augmented(x, cond, **kw):
            return D(gans.diff_augment(x, policy), cond, **kw)
        return augmented

    def _auxiliary(self) -> bool:
        return getattr(self.config, "auxiliary", False)

    def _d_pass(self, D, real, fake, cond, fake_cond=None) -> _Pass:
        """D on the real batch (condition `cond`) and the detached generated one (`fake_cond`, by default the
        same); an AC-GAN D also classifies the real batch, and the generated one as model.aux_generated says
        (its adversarial logit takes no label: D sees y only through the class term)."""
        fake_cond = cond if fake_cond is None else fake_cond
        if not self._auxiliary():
            return _Pass(fake, D(real, cond), D(_detach(fake), fake_cond))
        real_logits, real_classes = D(real, None, classes=True)
        fake_logits, fake_classes = D(_detach(fake), None, classes=True)
        aux = gans.auxiliary_loss(real_classes, cond)
        generated = gans.generated_class_loss(fake_classes, fake_cond, self.spec.model.aux_generated)
        return _Pass(fake, real_logits, fake_logits, aux if generated is None else aux + generated)

    def eval_step(self, models, batch):
        n = len(batch["features"])
        G, D = models["generator"], models["discriminator"]
        real, cond = self._real_and_condition(batch)
        fake = G(self._noise(batch), cond)
        out = self._report(_Pass(fake, D(real, cond), D(fake, cond)), None, None)
        out.pop("d_loss_levels", None)
        return {k: v * n for k, v in out.items()}

    def _judge(self, data_dir: Path, device: str = "cpu") -> judges.Judge:
        return judges.load_or_train(data_dir, self.manifest.fingerprint, self.shape,
                                    getattr(self.config, "num_classes", 0) or None, device=device)

    def data_aid_missing(self, data_dir: Path) -> str | None:
        if judges.judge_path(data_dir, self.manifest.fingerprint).is_file():
            return None
        return f"the data set's judge, a {judges.describe_protocol()}"

    def make_data_aid(self, data_dir: Path, device: str) -> None:
        self._judge(data_dir, device)

    def evaluate(self, models, data_dir: Path, split: str = "test") -> Evaluation:
        """The metrics of the module docstring on `split` (test; the benchmarks choose settings on val)."""
        G = self.sampler(models).eval()
        judge = self._judge(data_dir)
        clf = judge.classifier

        def fake(draw: int, n: int, y: np.ndarray | None) -> torch.Tensor:
            # cgan: the generated set has the real subset's labels, so both sets have the same class mix
            return generate(G, n, torch.tensor(y) if self.kind == "cgan" else None, seed=SEED + draw)

        metrics_, (x_eval, y_eval) = frechet_figures(clf, data_dir, split, self.shape, fake)
        n = len(x_eval)
        if judge.labelled:
            metrics_["classifier_test_accuracy"] = (
                judge.test_accuracy if split == "test" and judge.test_accuracy is not None
                else metrics.classifier_accuracy(clf, self._unit_images(x_eval), torch.tensor(y_eval)))
        if self.kind == "cgan":
            metrics_["conditional_accuracy"] = conditional_accuracy(G, clf, self.config.num_classes, n)
        from deepgen import plots

        grid_labels = torch.arange(64) % self.config.num_classes if self.kind == "cgan" else None
        samples = generate(G, 64, grid_labels, seed=SEED + 1).flatten(1).numpy()
        sampler = "EMA of G" if "generator_ema" in models else "G"
        tags = {"fid_protocol": f"{n} random {split} images vs {n} generated ({sampler}), the mean of "
                                f"{FID_DRAWS} draws; the floor: vs {n} train images, the mean of {FID_DRAWS} draws; "
                                f"features and labels: {judge.describe()}"}
        return Evaluation(metrics_, registry_tags=tags,
                          figures={"samples": plots.sample_grid(samples, list(self.shape))})

    def epoch_extras(self, models, epoch: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Watching it train (rank 0, after each epoch): the sampling G's grid from the same noise every
        epoch (one column per label for a conditional G), and every model.watch_every epochs and at the last
        the Frechet distance on the validation split (up to WATCH_SAMPLES images) in the judge's features."""
        m = self.spec.model
        every = getattr(m, "watch_every", 0)
        if not every:
            return {}, {}
        G = self.sampler(models)
        was_training = G.training
        columns = getattr(self.config, "num_classes", 0) or 8
        images = {"samples": sample_grid(G, 8 * columns, columns=columns, seed=SEED + 1)}
        metrics_ = {}
        data_dir = getattr(self.spec, "data_dir", None)
        if data_dir and Path(data_dir).is_dir() and (epoch % every == 0 or epoch == self.spec.train.epochs):
            judge = self._judge(data_dir)
            x_val, y_val = sample_rows(data_dir, "val", WATCH_SAMPLES, np.random.default_rng(SEED))
            labels = torch.tensor(y_val) if self.kind == "cgan" else None
            fake = generate(G, len(x_val), labels, seed=SEED)
            metrics_["val_frechet_distance"] = metrics.frechet_distance(
                metrics.classifier_features(judge.classifier, self._unit_images(x_val)),
                metrics.classifier_features(judge.classifier, fake))
        G.train(was_training)
        return metrics_, images

    def export(self, dest: Path, models, evaluation: Evaluation) -> Path:
        G = self.sampler(models)
        return save_model_dir(dest, "generator", self.spec.model, self.manifest, G,
                              {"generator": type(G).__name__})

    def _report(self, p: _Pass, d_loss, g_loss) -> dict[str, torch.Tensor]:
        """Detached batch means; "loss" is D's loss, -V(D, G) (log 4 = 1.386 where D cannot tell).
        d_real, d_fake: D's mean probability on real and generated images (before this step's D update)."""
        r, f = p.real_logits.detach().float(), p.fake_logits.detach().float()
        loss = self.spec.model.loss
        if d_loss is None:
            d_loss = gans.discriminator_loss(r, f, loss)
        if g_loss is None:
            g_loss = gans.generator_loss(f, loss)
        out = {"loss": d_loss.detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
               "d_real": torch.sigmoid(r).mean(), "d_fake": torch.sigmoid(f).mean()}
        if r.dim() == 2:  # LAPGAN: one discriminator per level, finest first
            levels = torch.stack([gans.discriminator_loss(r[:, k], f[:, k], loss) for k in range(r.shape[1])])
            out["d_loss_levels"] = levels
            out |= {f"d_loss_{k}": v for k, v in enumerate(levels)}
        return out

    # -- batch handling -- #

    def _images(self, batch) -> torch.Tensor:
        """(B, C*H*W) rows in [0, 1] -> (B, C, H, W) in [-1, 1], in the models' layout (channels-last on CUDA)."""
        x = batch["features"]
        return accel.conv_input(x.view(len(x), *self.shape) * 2 - 1)

    def _unit_images(self, rows: np.ndarray) -> torch.Tensor:
        # a copy: arrays read from Arrow are read-only
        return torch.tensor(rows, dtype=torch.float32).view(len(rows), *self.shape)

    def _real_and_condition(self, batch):
        """(what D sees of a real batch, the condition G and D share): images and labels (cgan) or None;
        LAPGAN: the Laplacian bands and the low-pass conditions of the finer levels."""
        images = self._images(batch)
        if self.kind == "lapgan":
            return gans.laplacian_pyramid(images, self.config.levels)
        if self.kind == "cgan":
            if "label" not in batch:
                raise DataError(f"{self.spec.name}: model.kind cgan needs batch['label']; the data has no labels")
            return images, batch["label"].long()
        return images, None

    def _noise(self, batch) -> torch.Tensor:
        x = batch["features"]
        return torch.randn(len(x), self.config.nz, device=x.device)


def _updates(optimizer: torch.optim.Optimizer) -> int:
    """The optimizer's updates so far (G's: the EMA's warm-up; D's: lazy R1), read from Adam's step count
    (checkpointed with the optimizer, so a resumed run continues where it stopped)."""
    state = optimizer.state.get(optimizer.param_groups[0]["params"][0], {})
    return int(state.get("step", 0))


def _detach(x):
    return [t.detach() for t in x] if isinstance(x, list) else x.detach()


def _requiring_grad(x):
    """The real batch as leaves that record D's input gradient (R1); LAPGAN's bands each."""
    return [t.detach().requires_grad_(True) for t in x] if isinstance(x, list) else x.detach().requires_grad_(True)


# --- generation helpers (for evaluation and for `deepgen sample` / `deepgen upscale`) --------------


@torch.no_grad()
def generate(G, n: int, labels: torch.Tensor | None = None, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """n generated images (n, C, H, W) in [0, 1], on the CPU; labels (n,) for a conditional generator."""
    G.eval()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        out.append(gans.to_unit(G.sample(b, None if labels is None else labels[i:i + b], generator=gen)).cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def frechet_figures(clf, data_dir: str | Path, split: str, shape,
                    fake: Callable[[int, int, np.ndarray | None], torch.Tensor],
                    draws: int = FID_DRAWS) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray | None]]:
    """The Frechet distance of generated images to N = min(rows, FID_SAMPLES) random rows of `split`, in the
    features of `clf` (the judge), and its floor, N train rows against the same rows: what a perfect
    generator would score. Each is the mean over `draws` draws: `fake(draw, N, labels of the rows)` gives
    draw `draw`'s N images in [0, 1]; each draw of train rows is a fresh permutation's first N. Rows are read
    chunk by chunk, never a whole split (the train split once, for every draw's rows together), in an order
    fixed by SEED, so every model judged on a split has the same floor.
    Returns the metrics and (rows, labels) of `split`."""
    rng = np.random.default_rng(SEED)
    x_eval, y_eval = sample_rows(data_dir, split, FID_SAMPLES, rng)
    n = len(x_eval)
    real = metrics.classifier_features(clf, judges.unit_images(x_eval, shape))
    distance = [metrics.frechet_distance(real, metrics.classifier_features(clf, fake(k, n, y_eval)))
                for k in range(draws)]
    train_rows = split_rows(data_dir, "train")
    x_train, _ = take_rows(data_dir, "train", np.concatenate([rng.permutation(train_rows)[:n] for _ in range(draws)]))
    floor = [metrics.frechet_distance(real, metrics.classifier_features(clf, judges.unit_images(rows, shape)))
             for rows in np.split(x_train, draws)]
    out = {"frechet_distance": float(np.mean(distance)), "frechet_distance_train_vs_test": float(np.mean(floor)),
           "fid_samples": float(n), "fid_draws": float(draws)}
    out["frechet_ratio"] = out["frechet_distance"] / max(out["frechet_distance_train_vs_test"], 1e-12)
    return out, (x_eval, y_eval)


@torch.no_grad()
def conditional_accuracy(G, clf, num_classes: int, n: int, seed: int = SEED) -> float:
    """The classifier's accuracy on about n generated images, n / num_classes asked of each label."""
    per = max(n // num_classes, 1)
    labels = torch.arange(num_classes).repeat_interleave(per)
    return metrics.classifier_accuracy(clf, generate(G, len(labels), labels, seed=seed), labels)


def sample_grid(G, n: int = 64, label: int | None = None, columns: int = 8, seed: int = 0) -> np.ndarray:
    """n samples tiled in a grid as a uint8 image: (rows*H, columns*W) for one channel, (.., .., 3) for RGB,
    (.., .., 4) for RGBA, the channel mean otherwise. A conditional G draws all n of `label`, or without one
    the labels 0, 1, ... in turn."""
    num_classes = getattr(G.config, "num_classes", 0)
    labels = None
    if num_classes:
        if label is not None and not 0 <= label < num_classes:
            raise ValueError(f"label {label}: this generator draws labels 0..{num_classes - 1}")
        labels = torch.full((n,), label) if label is not None else torch.arange(n) % num_classes
    elif label is not None:
        raise ValueError("this generator is unconditional; it takes no label")
    return plots.image_tiles(generate(G, n, labels, seed=seed).numpy(), columns)  # (n, C, H, W) in [0, 1]


# --- the exported generator (family "generator") -------------------------------------------------


class GeneratorSampler(Predictor):
    """An exported generator folder (family "generator"): `deepgen sample` and the pyfunc read it (an SRGAN's
    generator is read by deepgen.tasks.srgan.Upscaler)."""

    def __init__(self, generator, meta):
        self.generator = generator.eval()
        self.meta = meta

    @classmethod
    def load(cls, directory: str | Path) -> GeneratorSampler:
        meta = read_meta(directory)
        if meta.family != "generator":
            raise DataError(f"{directory}: a {meta.family} model, not a generator")
        return cls(load_weights(directory, gans.build_generator(meta.extra["generator"], meta.config)), meta)

    def sample_grid(self, n: int = 64, label: int | None = None, seed: int = 0) -> np.ndarray:
        return sample_grid(self.generator, n, label, seed=seed)

    def upscale(self, lr: np.ndarray) -> np.ndarray:
        raise DataError(f"a {self.meta.kind} generator samples images; only srgan upscales")

    def answer(self, model_input) -> np.ndarray:
        """One image per row, from the noise its `seed` draws (and its `label`, for a conditional generator)."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        num_classes = getattr(self.generator.config, "num_classes", 0)
        if num_classes and "label" not in frame.columns:
            raise ValueError(f"a conditional generator needs a `label` column (0..{num_classes - 1}) beside `seed`")
        images = []
        for i, seed in enumerate(frame["seed"].astype(int)):
            label = torch.tensor([int(frame["label"].iloc[i])]) if num_classes else None
            if label is not None and not 0 <= int(label) < num_classes:
                raise ValueError(f"label {int(label)}: this generator draws labels 0..{num_classes - 1}")
            images.append(generate(self.generator, 1, label, seed=seed).numpy())
        c, h, w = self.meta.shape
        return np.concatenate(images).astype(np.float32) if images else np.zeros((0, c, h, w), np.float32)

    def example_input(self) -> pd.DataFrame:
        frame = pd.DataFrame({"seed": np.array([0, 1], np.int64)})
        if getattr(self.generator.config, "num_classes", 0):
            frame["label"] = np.array([0, 1], np.int64) % self.generator.config.num_classes
        return frame

    def evaluate(self, data_dir: Path, anomaly_spec=None) -> dict[str, float] | None:
        return None  # not comparable across datasets without retraining the feature classifier


TASKS = dict.fromkeys(("gan", "dcgan", "cgan", "lapgan"), GanTask)
PREDICTORS = {"generator": GeneratorSampler}


def next_command(kind: str, name: str) -> str:
    label = " --label 3" if kind == "cgan" else ""
    return f"deepgen sample --model {name}@champion --n 64{label} --out grid.png"
