"""BERT as two tasks: pretraining (masked-LM + next-sentence prediction) and sequence classification.

Pretraining masks each batch afresh (dynamic masking, 80/10/10) and runs the MLM head on the masked
positions only. Fine-tuning starts from a pretrained encoder (a registered `bert_pretrain` model, its
exported folder, or a pretraining checkpoint) or from random initialisation, so the value of
pretraining shows side by side in MLflow. Both use AdamW with the loop's warmup and decay, gradient
accumulation and clipping (`train:` in the spec, deepgen.train.optim).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from deepgen.config import BertSpec, PipelineSpec
from deepgen.data.dataset import split_path
from deepgen.data.tokenizer import TOKENIZER_FILE
from deepgen.errors import DataError
from deepgen.models.bert import (
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    SpecialTokens,
    mask_tokens,
)
from deepgen.tasks import Evaluation, unwrap
from deepgen.train.optim import ScheduledTask

BERT_CONFIG = "bert-config.json"  # written beside every pretraining checkpoint, so it can seed fine-tuning
EVAL_MASK_SEED = 1234  # val/test masking is fixed, so epochs and models are compared on the same positions


def special_tokens(manifest) -> SpecialTokens:
    ids = manifest.special_ids
    return SpecialTokens(pad=ids["[PAD]"], unk=ids["[UNK]"], cls=ids["[CLS]"], sep=ids["[SEP]"], mask=ids["[MASK]"])


def bert_config(m: BertSpec, vocab_size: int, max_len: int, pad_id: int) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden=m.hidden, layers=m.layers, heads=m.heads,
                      intermediate=m.intermediate, max_len=max_len, dropout=m.dropout,
                      attention_dropout=m.attention_dropout, position=m.position, pad_id=pad_id)


def attention_mask(batch) -> torch.Tensor | None:
    """(B, T) True on real tokens, or None when no row is padded (SDPA then takes its fastest path). The
    check is made on the host only: on a GPU it would wait for every step queued before it."""
    ids, length = batch["input_ids"], batch["length"]
    if length.device.type == "cpu" and bool((length == ids.shape[1]).all()):
        return None
    return torch.arange(ids.shape[1], device=ids.device)[None, :] < length[:, None]


def read_split(data_dir: Path, split: str, columns: tuple[str, ...]) -> dict[str, torch.Tensor]:
    from deepgen.train.env import arrow_tensors

    path = split_path(data_dir, split)
    if not Path(path).is_file():
        raise DataError(f"{path}: missing; run `deepgen prepare` first")
    return arrow_tensors(pq.read_table(path, columns=list(columns)), columns)


def batches_of(data: dict[str, torch.Tensor], batch_size: int = 256):
    n = len(next(iter(data.values())))
    for i in range(0, n, batch_size):
        yield {k: v[i:i + batch_size] for k, v in data.items()}


# --- pretraining -----------------------------------------------------------------------------------


def pretraining_forward(model, batch, special: SpecialTokens, mask_rate: float,
                        generator: torch.Generator | None = None):
    """Mask the batch afresh (80/10/10) and run MLM + NSP on it."""
    vocab_size = unwrap(model).config.vocab_size
    masked, labels = mask_tokens(batch["input_ids"], special, vocab_size, mask_rate, generator=generator)
    # NSP labels as BertForPreTraining wants them: 0 = IsNext, 1 = NotNext
    return model(masked, batch["segment_ids"], attention_mask(batch), mlm_labels=labels,
                 nsp_labels=1 - batch["is_next"])


@torch.no_grad()
def pretraining_metrics(model, data_dir: Path, special: SpecialTokens, mask_rate: float) -> dict[str, float]:
    """MLM and NSP loss and accuracy on the test split, with fixed masking; and the MLM perplexity."""
    model.eval()
    sums: dict[str, float] = {}
    rows = 0
    generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
    for batch in batches_of(read_split(data_dir, "test", BertPretrainTask.batch_columns)):
        out = pretraining_forward(model, batch, special, mask_rate, generator)
        n = len(batch["input_ids"])
        for k, v in {"mlm_loss": out.mlm_loss * out.mlm_count, "nsp_loss": out.nsp_loss * n, "mlm_count": out.mlm_count,
                     "mlm_correct": out.mlm_correct, "nsp_correct": out.nsp_correct}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        rows += n
    # MLM over masked tokens (batches mask different numbers), NSP over rows
    metrics = {"mlm_loss": sums["mlm_loss"] / max(sums["mlm_count"], 1), "nsp_loss": sums["nsp_loss"] / rows,
               "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1),
               "nsp_accuracy": sums["nsp_correct"] / rows}
    metrics["perplexity"] = math.exp(min(metrics["mlm_loss"], 50))
    return metrics



class BertPretrainTask(ScheduledTask):
    batch_columns = ("input_ids", "segment_ids", "length", "is_next")
    # metrics that are means over masked tokens, not rows: (numerator, denominator), sums over the batch
    ratio_metrics = {"mlm_loss": ("mlm_loss_sum", "mlm_count"), "mlm_accuracy": ("mlm_correct", "mlm_count")}

    def __init__(self, spec: PipelineSpec, manifest):
        self.spec, self.manifest, self.m = spec, manifest, spec.model
        self.special = special_tokens(manifest)
        self.config = bert_config(self.m, manifest.vocab_size, manifest.max_len, self.special.pad)

    def build_models(self):
        return {"model": BertForPreTraining(self.config)}

    def build_optimizers(self, models):
        return {"model": unwrap(models["model"]).configure_optimizers(self.spec.train.weight_decay, self.spec.train.lr)}

    def train_step(self, models, optimizers, batch):
        model = models["model"]
        out = self.update(models, optimizers, lambda: pretraining_forward(model, batch, self.special, self.m.mask_rate),
                          loss_of=lambda out: out.loss)
        return {"loss": out.loss.detach(), "nsp_loss": out.nsp_loss.detach(),
                "nsp_accuracy": (out.nsp_correct / out.nsp_count.clamp(min=1)).detach(),
                "mlm_loss_sum": (out.mlm_loss * out.mlm_count).detach(), "mlm_correct": out.mlm_correct.detach(),
                "mlm_count": out.mlm_count.detach(), "tokens": batch["length"].sum()}

    def eval_step(self, models, batch):
        generator = torch.Generator(device=batch["input_ids"].device).manual_seed(EVAL_MASK_SEED)
        out = pretraining_forward(models["model"], batch, self.special, self.m.mask_rate, generator)
        n = len(batch["input_ids"])
        return {"loss": out.loss * n, "nsp_loss": out.nsp_loss * n, "nsp_accuracy": out.nsp_correct,
                "mlm_loss_sum": out.mlm_loss * out.mlm_count, "mlm_correct": out.mlm_correct,
                "mlm_count": out.mlm_count}

    def evaluate(self, models, data_dir: Path) -> Evaluation:
        model = unwrap(models["model"]).eval()
        metrics = pretraining_metrics(model, data_dir, self.special, self.m.mask_rate)
        return Evaluation(metrics, registry_tags={"vocab_size": self.config.vocab_size,
                                                  "max_len": self.config.max_len})

    def checkpoint_files(self, directory: Path) -> None:
        """A pretraining checkpoint carries its config and tokenizer, so fine-tuning can start from it."""
        (directory / BERT_CONFIG).write_text(json.dumps(asdict(self.config)))
        shutil.copy(self.spec.data_dir / TOKENIZER_FILE, directory / TOKENIZER_FILE)

    def export(self, dest: Path, models, evaluation: Evaluation) -> Path:
        return save_text_model_dir(dest, "bert_encoder", self.spec, self.manifest, unwrap(models["model"]),
                                   {"special_ids": self.manifest.special_ids, "mask_rate": self.m.mask_rate})


# --- fine-tuning -----------------------------------------------------------------------------------


class BertClassifierTask(ScheduledTask):
    batch_columns = ("input_ids", "segment_ids", "length", "label")

    def __init__(self, spec: PipelineSpec, manifest):
        self.spec, self.manifest, self.m = spec, manifest, spec.model
        if not manifest.class_names:
            raise DataError(f"{spec.name}: bert_classifier needs labelled text (data.source.kind labelled_text)")
        self.num_labels = len(manifest.class_names)
        self.pretrained = Path(self.m.pretrained) if self.m.pretrained else None
        if self.pretrained is not None:
            # the encoder's sizes and vocabulary are the pretrained model's; dropout stays ours
            config = pretrained_config(self.pretrained, manifest.max_len)
            self.config = BertConfig(**{**config, "dropout": self.m.dropout,
                                        "attention_dropout": self.m.attention_dropout})
            if self.config.vocab_size != manifest.vocab_size:
                raise DataError(f"{self.pretrained}: vocabulary {self.config.vocab_size} differs from the dataset's "
                                f"{manifest.vocab_size}; prepare the text with the pretrained model's tokenizer")
        else:
            self.config = bert_config(self.m, manifest.vocab_size, manifest.max_len, special_tokens(manifest).pad)

    def build_models(self):
        model = BertForSequenceClassification(self.config, self.num_labels, dropout=self.m.classifier_dropout)
        if self.pretrained is not None:
            result = model.load_encoder_state(pretrained_state(self.pretrained))
            if result.missing_keys or result.unexpected_keys:  # else an encoder left at its random init
                raise DataError(f"model.pretrained: {self.pretrained} does not hold this encoder (missing "
                                f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
        return {"model": model}

    def build_optimizers(self, models):
        from deepgen.models.bert import configure_optimizers

        return {"model": configure_optimizers(unwrap(models["model"]), self.spec.train.weight_decay,
                                              self.spec.train.lr)}

    def forward(self, model, batch):
        return model(batch["input_ids"], batch["segment_ids"], attention_mask(batch), labels=batch["label"])

    def train_step(self, models, optimizers, batch):
        model = models["model"]
        out = self.update(models, optimizers, lambda: self.forward(model, batch), loss_of=lambda out: out.loss)
        return {"loss": out.loss.detach(), "accuracy": (out.correct / out.count).detach(),
                "tokens": batch["length"].sum()}

    def eval_step(self, models, batch):
        out = self.forward(models["model"], batch)
        return {"loss": out.loss * out.count, "accuracy": out.correct}

    @torch.no_grad()
    def evaluate(self, models, data_dir: Path) -> Evaluation:
        from deepgen import plots

        model = unwrap(models["model"]).eval()
        data = read_split(data_dir, "test", self.batch_columns)
        probs = torch.cat([self.forward(model, b).logits.float().softmax(-1) for b in batches_of(data)]).numpy()
        truth = data["label"].numpy()
        metrics = classification_metrics(truth, probs, self.num_labels)
        figures = {"confusion_matrix": plots.confusion_matrix(truth, probs.argmax(1), self.manifest.class_names)}
        tags = {"class_names": json.dumps(self.manifest.class_names),
                "initialisation": "pretrained" if self.pretrained else "random"}
        return Evaluation(metrics, registry_tags=tags, figures=figures)

    def export(self, dest: Path, models, evaluation: Evaluation) -> Path:
        return save_text_model_dir(dest, "text_classifier", self.spec, self.manifest, unwrap(models["model"]),
                                   {"class_names": self.manifest.class_names, "num_labels": self.num_labels})


def classification_metrics(truth: np.ndarray, probs: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and F1 (macro over classes; for two classes also the positive class's F1 and ROC-AUC)."""
    from sklearn.metrics import f1_score, roc_auc_score

    pred = probs.argmax(1)
    metrics = {"accuracy": float((pred == truth).mean()),
               "f1": float(f1_score(truth, pred, average="macro", labels=list(range(num_labels)), zero_division=0))}
    if num_labels == 2 and len(np.unique(truth)) == 2:
        metrics["f1_positive"] = float(f1_score(truth, pred, zero_division=0))
        metrics["roc_auc"] = float(roc_auc_score(truth, probs[:, 1]))
    return metrics


# --- files -----------------------------------------------------------------------------------------


def pretrained_config_file(directory: Path) -> Path:
    """An exported bert_encoder folder (deepgen-model.json) or a pretraining checkpoint (bert-config.json)."""
    from deepgen.export import META

    for name in (META, BERT_CONFIG):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory}: neither an exported bert_pretrain model nor a pretraining checkpoint "
                    f"(no {META} or {BERT_CONFIG})")


def pretrained_config(directory: Path, max_len: int | None = None) -> dict:
    """The pretrained encoder's BertConfig fields, checked to hold rows of `max_len` tokens if given."""
    config = json.loads(pretrained_config_file(directory).read_text())
    config = config.get("config", config)
    if max_len is not None and max_len > config["max_len"]:
        raise DataError(f"data.text.max_len: {max_len} tokens, but the pretrained encoder {directory.name} has "
                        f"positions for {config['max_len']}; set data.text.max_len to {config['max_len']} or less")
    return config


def pretrained_state(directory: Path) -> dict[str, torch.Tensor]:
    from deepgen.export import WEIGHTS
    from deepgen.train.loop import STATE_FILE

    if (directory / WEIGHTS).is_file():
        return torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
    return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)["models"]["model"]


def save_text_model_dir(dest: Path, family: str, spec: PipelineSpec, manifest, model, extra: dict) -> Path:
    """weights.pt + deepgen-model.json + the tokenizer the model reads its input with."""
    from deepgen.data.prepare import Scaler
    from deepgen.export import META, WEIGHTS, ModelMeta

    dest.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), dest / WEIGHTS)
    shutil.copy(spec.data_dir / TOKENIZER_FILE, dest / TOKENIZER_FILE)
    meta = ModelMeta(family=family, kind=spec.model.kind, config=asdict(model.config), shape=[manifest.max_len],
                     scaler=Scaler(), feature_names=None,
                     extra={**extra, "max_len": manifest.max_len,
                            "tokenizer_fingerprint": manifest.tokenizer_fingerprint})
    (dest / META).write_text(meta.model_dump_json(indent=2))
    return dest
