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
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from deepgen.config import BertSpec, PipelineSpec
from deepgen.data.dataset import split_path
from deepgen.data.sources import load_table
from deepgen.data.tokenizer import TOKENIZER_FILE
from deepgen.errors import DataError, DeepgenError
from deepgen.export import ModelMeta, load_weights, read_meta
from deepgen.files import check_output, writing_output
from deepgen.models.bert import (
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    SpecialTokens,
    mask_tokens,
    strip_wrappers,
)
from deepgen.serving import Predictor, input_texts
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


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch cut to its longest row: rows are stored padded to max_len, and on short texts (a gloss, a
    tweet) most of a row is padding that attention and the feed-forward would still compute. On the host
    only, as attention_mask: on a GPU the length check would wait for the steps queued before it."""
    ids, length = batch["input_ids"], batch["length"]
    if length.device.type != "cpu" or len(length) == 0:
        return batch
    longest = int(length.max())
    if longest >= ids.shape[1]:
        return batch
    return {k: v[:, :longest] if v.dim() == 2 and v.shape[1] == ids.shape[1] else v for k, v in batch.items()}


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
    batch = trim_padding(batch)
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


def pretraining_baselines(data_dir: Path, special: SpecialTokens) -> dict[str, float]:
    """What guessing gets on the test split: MLM accuracy of always answering the training split's most
    frequent token (over real, non-special tokens, which is what masking picks from), and NSP accuracy of
    always answering the majority class of the test pairs (0.5 for balanced pairs)."""
    train = read_split(data_dir, "train", ("input_ids", "length"))
    test = read_split(data_dir, "test", ("input_ids", "length", "is_next"))
    specials = torch.tensor(special.ids)

    def real_tokens(data):
        ids = data["input_ids"]
        real = torch.arange(ids.shape[1])[None, :] < data["length"][:, None]
        return ids[real & ~torch.isin(ids, specials)]

    most_frequent = int(torch.bincount(real_tokens(train).long()).argmax())
    test_tokens = real_tokens(test)
    next_share = float(test["is_next"].float().mean())
    return {"mlm_accuracy_most_frequent": float((test_tokens == most_frequent).float().mean()),
            "nsp_accuracy_majority": max(next_share, 1 - next_share)}



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
        metrics.update(pretraining_baselines(data_dir, self.special))
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
        self.class_weights = class_weights(manifest.label_counts["train"] if manifest.label_counts else None,
                                           self.m.class_weight)

    def build_models(self):
        model = BertForSequenceClassification(self.config, self.num_labels, dropout=self.m.classifier_dropout,
                                              pooling=self.m.pooling)
        state = pretrained_state(self.pretrained) if self.pretrained is not None else None
        if self.m.domain_adaptive is not None:
            state = domain_adaptive_pretraining(self.config, state, self.spec.data_dir, special_tokens(self.manifest),
                                                self.m.domain_adaptive, self.spec.train.seed)
        if state is not None:
            result = model.load_encoder_state(state)
            if result.missing_keys or result.unexpected_keys:  # else an encoder left at its random init
                raise DataError(f"model.pretrained: {self.pretrained} does not hold this encoder (missing "
                                f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
        if self.m.freeze_embeddings:  # the optimizer takes only what still requires a gradient
            model.bert.embeddings.requires_grad_(False)
        return {"model": model}

    def build_optimizers(self, models):
        from deepgen.models.bert import configure_optimizers

        return {"model": configure_optimizers(unwrap(models["model"]), self.spec.train.weight_decay,
                                              self.spec.train.lr, layer_lr_decay=self.m.layer_lr_decay)}

    def forward(self, model, batch):
        """Cross-entropy on the [CLS] classifier, each class weighted by `class_weights` (None: all 1)."""
        batch = trim_padding(batch)
        out = model(batch["input_ids"], batch["segment_ids"], attention_mask(batch), labels=batch["label"])
        if self.class_weights is None:
            return out
        weight = self.class_weights.to(out.logits.device)
        loss = F.cross_entropy(out.logits.float(), batch["label"], weight=weight)
        return out._replace(loss=loss)

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
                                   {"class_names": self.manifest.class_names, "num_labels": self.num_labels,
                                    "pooling": self.m.pooling})


def class_weights(counts: list[int] | None, rule: str) -> torch.Tensor | None:
    """Per-class loss weights rows / (classes * rows of the class) (King & Zeng 2001; scikit-learn's
    "balanced"), so every class weighs as much in the loss as it would in a balanced set; None: all 1.
    "auto" weights only when the classes are unbalanced: the largest over 1.5 times the smallest."""
    if counts is None or rule == "none":
        return None
    n = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
    if rule == "auto" and n.max() <= 1.5 * n.min():
        return None
    return n.sum() / (len(n) * n)


def domain_adaptive_pretraining(config: BertConfig, state: dict[str, torch.Tensor] | None, data_dir: Path,
                                special: SpecialTokens, spec, seed: int) -> dict[str, torch.Tensor]:
    """Task-adaptive pretraining (Gururangan et al. 2020): continue masked-LM on the training split's texts.

    objective: min over theta of E_x E_mask[ -sum_{i masked} log p_theta(x_i | x without the masked) ], x the
    unlabelled training texts ([CLS] text [SEP]; single texts, so there is no NSP term). Starts from `state`
    (a pretrained BertForPreTraining's, heads included) or from random initialisation; returns the adapted
    state. Seeded on its own RNG stream, so every worker computes the same weights (DDP broadcasts rank 0's).
    """
    from deepgen.config import TrainSpec
    from deepgen.train.optim import Schedule

    data = read_split(data_dir, "train", ("input_ids", "segment_ids", "length"))
    rows = len(data["input_ids"])
    train = TrainSpec(epochs=spec.epochs, lr=spec.lr, warmup_fraction=0.06, lr_decay="linear", clip_grad_norm=1.0)
    schedule = Schedule(train, max(1, math.ceil(rows / spec.batch_size)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForPreTraining(config)
        if state is not None:
            model.load_state_dict({strip_wrappers(k): v for k, v in state.items()})
        optimizer = model.configure_optimizers(0.01, spec.lr)
        model.train()
        for _ in range(spec.epochs):
            order = torch.randperm(rows)
            for lo in range(0, rows, spec.batch_size):
                batch = trim_padding({k: v[order[lo:lo + spec.batch_size]] for k, v in data.items()})
                masked, labels = mask_tokens(batch["input_ids"], special, config.vocab_size, spec.mask_rate)
                out = model(masked, batch["segment_ids"], attention_mask(batch), mlm_labels=labels)
                schedule.backward(out.mlm_loss)
                schedule.step(model, optimizer)
    return model.state_dict()


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
    from deepgen.train.checkpoint import STATE_FILE

    if (directory / WEIGHTS).is_file():
        return torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
    return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)["models"]["model"]


def save_text_model_dir(dest: Path, family: str, spec: PipelineSpec, manifest, model, extra: dict) -> Path:
    """weights.pt + deepgen-model.json + the tokenizer the model reads its input with."""
    from deepgen.data.manifest import Scaler
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


# --- the exported models: a text classifier, and an encoder (what fine-tuning and retrieval load) ---------

EXAMPLE_TEXTS = pd.DataFrame({"text": ["a short example text", "another one"]})


class TextClassifier(Predictor):
    """An exported BERT classifier with its tokenizer: texts in, labels and probabilities out."""

    def __init__(self, model, tokenizer, meta: ModelMeta):
        self.model, self.tokenizer, self.meta = model.eval(), tokenizer, meta

    @classmethod
    def load(cls, directory: str | Path) -> TextClassifier:
        from deepgen.data.tokenizer import WordPieceTokenizer
        from deepgen.models.bert import BertConfig, BertForSequenceClassification

        meta = read_meta(directory)
        model = BertForSequenceClassification(BertConfig(**meta.config), meta.extra["num_labels"],
                                              pooling=meta.extra.get("pooling", "cls"))  # older exports: cls
        return cls(load_weights(directory, model), WordPieceTokenizer.load(directory), meta)

    @property
    def class_names(self) -> list[str]:
        return self.meta.extra["class_names"]

    @torch.no_grad()
    def probabilities(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """(N, num_labels) class probabilities of raw texts."""
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(texts[i:i + batch_size], self.meta.extra["max_len"])
            ids = torch.from_numpy(enc.input_ids.astype(np.int64))
            mask = torch.from_numpy(enc.attention_mask)
            out.append(self.model(ids, torch.from_numpy(enc.segment_ids.astype(np.int64)), mask).logits
                       .float().softmax(-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        """(label names, probability of each predicted label)."""
        probs = self.probabilities(texts)
        best = probs.argmax(1)
        return [self.class_names[i] for i in best], probs[np.arange(len(best)), best]

    @staticmethod
    def read_input(path: str | Path, column: str = "text") -> list[str]:
        """Texts of a file: .txt (one per line), or a CSV/Parquet table's `column`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        if path.suffix in (".csv", ".parquet"):
            from deepgen.data.text import text_column

            return text_column(load_table(str(path)), column, str(path))
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start}); give a UTF-8 .txt file with one text per "
                            "line, or a .csv/.parquet table") from None
        return [line for line in text.splitlines() if line.strip()]

    def predict_command(self, args, version) -> int:
        """Label and probability per text (--text, repeatable, and the lines or `--text-column` of --input):
        printed as a table (or JSON lines), or written to --output Parquet."""
        texts = list(args.text or [])
        if args.output:
            if Path(args.output).suffix != ".parquet":
                raise DeepgenError(f"{args.output}: texts are written as Parquet; give --output FILE.parquet")
            check_output(Path(args.output), *([Path(args.input)] if args.input else []), force=args.force)
        if args.input:
            texts += self.read_input(args.input, args.text_column)
        if not texts:
            raise DeepgenError(f"{args.model}: give --text \"...\" (repeatable) "
                               "or --input FILE (.txt lines, .csv/.parquet)")
        labels, probs = self.predict(texts)
        if args.output:
            import pyarrow as pa

            with writing_output(Path(args.output)) as tmp:
                pq.write_table(pa.table({"text": texts, "label": labels, "probability": probs.astype(float)}), tmp)
            print(f"labelled {len(texts)} texts with {version.name} v{version.version} -> {args.output}")
        elif args.json:
            for text, label, p in zip(texts, labels, probs):
                print(json.dumps({"text": text, "label": label, "probability": round(float(p), 4)}))
        else:
            for text, label, p in zip(texts, labels, probs):
                print(f"{label:12} {p:.3f}  {text}")
        return 0

    def answer(self, model_input) -> pd.DataFrame:
        labels, probs = self.predict(input_texts(model_input))
        return pd.DataFrame({"label": labels, "probability": probs.astype(np.float64)})

    def example_input(self) -> pd.DataFrame:
        return EXAMPLE_TEXTS.copy()

    def evaluate(self, data_dir: Path, anomaly_spec=None) -> dict[str, float] | None:
        """Accuracy and F1 on another dataset's test split, if it was tokenized as this model reads text."""
        from deepgen.data.text import read_text_manifest

        manifest = read_text_manifest(data_dir)
        if manifest is None or manifest.tokenizer_fingerprint != self.meta.extra.get("tokenizer_fingerprint") \
                or manifest.class_names != self.class_names:
            return None
        data = read_split(data_dir, "test", BertClassifierTask.batch_columns)
        with torch.no_grad():
            probs = torch.cat([self.model(b["input_ids"], b["segment_ids"], attention_mask(b)).logits
                               .float().softmax(-1) for b in batches_of(data)]).numpy()
        return classification_metrics(data["label"].numpy(), probs, len(self.class_names))


class BertEncoder(Predictor):
    """An exported pretraining model (encoder + MLM/NSP heads) with its tokenizer; what fine-tuning loads."""

    def __init__(self, directory: Path, meta: ModelMeta):
        self.directory, self.meta = Path(directory), meta

    @classmethod
    def load(cls, directory: str | Path) -> BertEncoder:
        return cls(Path(directory), read_meta(directory))

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """(N, hidden) float32 text embeddings: the mean of the encoder's last-layer states over each text's
        real tokens ([CLS] text [SEP], padding left out), as Sentence-BERT pools."""
        if not hasattr(self, "_model"):
            from deepgen.data.tokenizer import WordPieceTokenizer
            from deepgen.models.bert import BertConfig, BertForPreTraining

            model = BertForPreTraining(BertConfig(**self.meta.config))
            self._model = load_weights(self.directory, model).bert
            self._tokenizer = WordPieceTokenizer.load(self.directory)
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self._tokenizer.encode_batch(texts[i:i + batch_size], self.meta.extra["max_len"])
            mask = torch.from_numpy(enc.attention_mask).float()  # (B, T)
            states = self._model(torch.from_numpy(enc.input_ids.astype(np.int64)), None, mask).sequence_output
            out.append(((states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).float().numpy())  # (B, C)
        return np.concatenate(out) if out else np.zeros((0, self.meta.config["hidden"]), np.float32)

    def answer(self, model_input) -> np.ndarray:
        return self.embed(input_texts(model_input))

    def example_input(self) -> pd.DataFrame:
        return EXAMPLE_TEXTS.copy()

    def evaluate(self, data_dir: Path, anomaly_spec=None) -> dict[str, float] | None:
        """Test MLM/NSP metrics on another pretraining dataset with the same tokenizer, else None."""
        from deepgen.data.text import read_text_manifest
        from deepgen.models.bert import BertConfig, BertForPreTraining

        manifest = read_text_manifest(data_dir)
        if manifest is None or manifest.tokenizer_fingerprint != self.meta.extra.get("tokenizer_fingerprint") \
                or manifest.task != "pretraining":
            return None
        model = load_weights(self.directory, BertForPreTraining(BertConfig(**self.meta.config)))
        return pretraining_metrics(model, data_dir, special_tokens(manifest), self.meta.extra["mask_rate"])


TASKS = {"bert_pretrain": BertPretrainTask, "bert_classifier": BertClassifierTask}
PREDICTORS = {"bert_encoder": BertEncoder, "text_classifier": TextClassifier}


def next_command(kind: str, name: str) -> str:
    if kind == "bert_pretrain":
        return f"fine-tune it with model.pretrained: {name}@champion (pipelines/bert_sentiment.yaml)"
    return f'deepgen predict --model {name}@champion --text "..."'
