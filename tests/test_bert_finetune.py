"""Fine-tuning features of the BERT classifier: domain-adaptive pretraining, class weighting, padding trimmed.

Small generated data, deepgen's own loop without Ray (as tests/test_bert_task.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import train_locally

from deepgen.config import DomainAdaptiveSpec, PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification, mask_tokens
from deepgen.tasks import build_task
from deepgen.tasks.bert import (
    attention_mask,
    class_weights,
    domain_adaptive_pretraining,
    read_split,
    special_tokens,
    trim_padding,
)
from deepgen.train.loop import load_model_weights

ENCODER = {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64, "dropout": 0.0, "attention_dropout": 0.0}
TEXT = {"max_len": 24, "vocab_size": 300, "min_frequency": 1}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def labelled_texts(path, n=300, minority_share=0.5, seed=0):
    """Texts of repeated word patterns: "ka lo mi" style phrases; the label is which of two word sets the
    phrase draws from, so the classes are learnable and masked words are predictable from their neighbours."""
    rng = np.random.default_rng(seed)
    words = [["ka", "lo", "mi", "nu", "po"], ["ra", "se", "ti", "vu", "wo"]]
    labels = (rng.random(n) < minority_share).astype(int)
    texts = [" ".join(rng.choice(words[y], 6)) for y in labels]
    pd.DataFrame({"text": texts, "label": np.array(["a", "b"])[labels]}).to_csv(path, index=False)
    return path


def classifier_spec(root, model=None, epochs=4) -> PipelineSpec:
    return PipelineSpec.validate_dict({
        "name": "clf", "data": {"source": {"kind": "labelled_text", "path": str(root / "l.csv")}, "text": TEXT},
        "model": {"kind": "bert_classifier", **ENCODER, **(model or {})},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 2e-3},
        "scaling": {"num_workers": 1}, "registry": {"model_name": "clf"},
        "tracking": {"runs_dir": str(root / "runs")}})


def masked_lm_loss(state, config, data, special) -> float:
    model = BertForPreTraining(config).eval()
    model.load_state_dict(state)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        masked, labels = mask_tokens(data["input_ids"], special, config.vocab_size, 0.15, generator=generator)
        return float(model(masked, data["segment_ids"], attention_mask(data), mlm_labels=labels).mlm_loss)


def test_domain_adaptive_pretraining_learns_the_training_texts_and_is_reproducible(tmp_path):
    labelled_texts(tmp_path / "l.csv")
    spec = classifier_spec(tmp_path)
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    task = build_task(spec, manifest)
    special = special_tokens(manifest)
    start = BertForPreTraining(task.config).state_dict()
    adapt = DomainAdaptiveSpec(epochs=30, lr=3e-3)
    adapted = domain_adaptive_pretraining(task.config, start, spec.data_dir, special, adapt, seed=0)
    val = read_split(spec.data_dir, "val", ("input_ids", "segment_ids", "length"))
    before, after = (masked_lm_loss(s, task.config, val, special) for s in (start, adapted))
    # a masked word is one of ten: guessing among them costs ln(10) = 2.3 nats; knowing the text's word set
    # (its unmasked neighbours tell it) ln(5) = 1.6
    assert after < np.log(10) - 0.3 < before, (before, after)
    again = domain_adaptive_pretraining(task.config, start, spec.data_dir, special, adapt, seed=0)
    assert all(torch.equal(adapted[k], again[k]) for k in adapted)  # every worker computes the same weights


def test_a_spec_with_domain_adaptive_pretraining_fine_tunes_from_the_adapted_encoder(tmp_path):
    labelled_texts(tmp_path / "l.csv")
    spec = classifier_spec(tmp_path, {"domain_adaptive": {"epochs": 2}})
    history, env, manifest = train_locally(spec, tmp_path / "ckpt")
    task = build_task(spec, manifest)
    models = load_model_weights(env.latest_checkpoint(), task)
    assert task.evaluate(models, spec.data_dir).metrics["accuracy"] > 0.9
    assert history[-1]["val_accuracy"] > 0.9


def test_class_weights_balance_unbalanced_classes_only():
    assert class_weights([50, 60], "auto") is None  # 1.2 : 1 is balanced enough
    assert class_weights([50, 60], "none") is None and class_weights(None, "balanced") is None
    w = class_weights([90, 10], "auto")
    assert torch.allclose(w, torch.tensor([100 / (2 * 90), 100 / (2 * 10)]))
    # each class then weighs the same in the loss: rows times weight is equal
    assert torch.allclose(w * torch.tensor([90.0, 10.0]), torch.full((2,), 50.0))
    assert torch.allclose(class_weights([50, 60], "balanced"), torch.tensor([110 / 100, 110 / 120]))


def test_unbalanced_training_classes_weight_the_classifiers_loss(tmp_path):
    labelled_texts(tmp_path / "l.csv", minority_share=0.15)
    spec = classifier_spec(tmp_path)
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    task = build_task(spec, manifest)
    counts = manifest.label_counts["train"]
    assert task.class_weights is not None and float(task.class_weights[1]) > 2 * float(task.class_weights[0])
    model = task.build_models()["model"].eval()
    batch = read_split(spec.data_dir, "train", task.batch_columns)
    with torch.no_grad():
        out = task.forward(model, batch)
        per_row = torch.nn.functional.cross_entropy(out.logits, batch["label"], reduction="none")
    w = (torch.tensor(counts).sum() / (2 * torch.tensor(counts).float()))[batch["label"]]
    assert torch.allclose(out.loss, (w * per_row).sum() / w.sum(), atol=1e-5)
    unweighted = build_task(classifier_spec(tmp_path, {"class_weight": "none"}), manifest)
    assert unweighted.class_weights is None


def test_trimming_padding_changes_no_prediction():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden=16, layers=2, heads=2, intermediate=32, max_len=12, dropout=0.0,
                        attention_dropout=0.0)
    model = BertForSequenceClassification(config, 3).eval()
    length = torch.tensor([5, 7, 3])
    ids = torch.randint(5, 50, (3, 12)) * (torch.arange(12)[None, :] < length[:, None])
    batch = {"input_ids": ids, "segment_ids": torch.zeros_like(ids), "length": length, "label": torch.tensor([0, 1, 2])}
    trimmed = trim_padding(batch)
    assert trimmed["input_ids"].shape == (3, 7) and torch.equal(trimmed["label"], batch["label"])
    with torch.no_grad():
        full = model(ids, batch["segment_ids"], attention_mask(batch)).logits
        short = model(trimmed["input_ids"], trimmed["segment_ids"], attention_mask(trimmed)).logits
    assert torch.allclose(full, short, atol=1e-5)


def test_pretraining_reports_what_guessing_gets(tmp_path):
    from deepgen.config import TextFilesSource, TextSpec
    from deepgen.data.text import prepare_pretraining
    from deepgen.tasks.bert import pretraining_baselines

    # every sentence is "w w w ." with w from a few words: "." is the most frequent token, a quarter of them
    rng = np.random.default_rng(0)
    words = ["ka", "lo", "mi", "nu", "po", "ra"]
    docs = ["\n".join(" ".join(rng.choice(words, 3)) + " ." for _ in range(4)) for _ in range(40)]
    (tmp_path / "c.txt").write_text("\n\n".join(docs))
    manifest, _ = prepare_pretraining(TextFilesSource(paths=[str(tmp_path / "c.txt")], sentence_split="lines"),
                                      tmp_path / "data", TextSpec(max_len=16, vocab_size=60, min_frequency=1),
                                      log=lambda m: None)
    guesses = pretraining_baselines(tmp_path / "data", special_tokens(manifest))
    assert guesses["mlm_accuracy_most_frequent"] == pytest.approx(0.25)
    assert guesses["nsp_accuracy_majority"] == pytest.approx(0.5, abs=0.03)  # pairs are half "next"
