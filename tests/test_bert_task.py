"""BERT through deepgen's own loop (no Ray): pretraining, then transfer to a task where pretraining must help.

The generated language has two groups of made-up words; a pretraining document uses words of one group
only, so masked-LM and NSP can learn which words belong together. The labelled task is "which group is
the word in `the WORD is near`", trained on half of each group's words and tested on the other half. A
classifier from random initialisation has never seen the held-out words (their embeddings are noise), so
it is at chance on them; one fine-tuned from the pretrained encoder knows their group from pretraining.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer

from deepgen.config import PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.errors import DataError, SpecError
from deepgen.orchestrate import resolve_inputs
from deepgen.serving import load_exported
from deepgen.tasks import build_task
from deepgen.tasks.bert import TextClassifier
from deepgen.train.env import LocalEnv
from deepgen.train.loop import STATE_FILE, load_model_weights, train_loop

WORDS_PER_GROUP = 24
ENCODER = {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64, "dropout": 0.0, "attention_dropout": 0.0}
# Room for every made-up word as one token: with less, some words end up split into letters (which ones
# depends on WordPiece's tie-breaking between equally frequent merges), and a split word's group cannot be
# read from one embedding.
TEXT = {"max_len": 16, "vocab_size": 400, "min_frequency": 1}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead, and the suite shares 2 cores
    yield
    torch.set_num_threads(threads)


def made_up_language(root, seed=0):
    rng = np.random.default_rng(seed)
    consonants = list("bcdfghjklmnpqrstvwxz")
    groups = [["".join(rng.choice(consonants, 5)) for _ in range(WORDS_PER_GROUP)] for _ in range(2)]
    docs = ["\n".join(" ".join(rng.choice(groups[d % 2], 5)) + "." for _ in range(4)) for d in range(300)]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    half = WORDS_PER_GROUP // 2

    def labelled(words: slice, n: int) -> pd.DataFrame:
        labels = np.arange(n) % 2
        texts = [f"the {rng.choice(groups[y][words])} is near" for y in labels]
        return pd.DataFrame({"text": texts, "label": np.array(["alpha", "beta"])[labels]})

    labelled(slice(0, half), 400).to_csv(root / "seen.csv", index=False)
    return labelled(slice(half, None), 200)  # held-out words, never in the labelled training data


def spec(root, name, data, model, epochs, lr) -> PipelineSpec:
    return PipelineSpec.validate_dict({
        "name": name, "data": data, "model": model, "train": {"epochs": epochs, "batch_size": 32, "lr": lr},
        "scaling": {"num_workers": 1}, "registry": {"model_name": name},
        "tracking": {"runs_dir": str(root / "runs")}})


def fit(spec: PipelineSpec, root):
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    env = LocalEnv(spec.data_dir, spec.anomaly, root / f"ckpt-{spec.name}", seed=0)
    history = train_loop(spec, manifest, env)
    task = build_task(spec, manifest)
    checkpoint = env.latest_checkpoint()
    return history, task, load_model_weights(checkpoint, task), checkpoint


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    held_out = made_up_language(root)
    pre = spec(root, "pre", {"source": {"kind": "text_files", "paths": [str(root / "corpus.txt")],
                                        "sentence_split": "lines"}, "text": TEXT},
               {"kind": "bert_pretrain", **ENCODER}, epochs=50, lr=3e-3)  # 25 sometimes stops short of the groups
    history, task, models, checkpoint = fit(pre, root)
    return {"root": root, "held_out": held_out, "history": history, "checkpoint": checkpoint, "task": task,
            "models": models, "spec": pre}


def test_pretraining_learns_and_reports_its_metrics(pretrained):
    history = pretrained["history"]
    for key in ("train_mlm_loss", "train_nsp_loss", "train_mlm_accuracy", "train_nsp_accuracy", "val_mlm_loss",
                "val_mlm_accuracy", "tokens_per_s"):
        assert key in history[-1], key
    assert history[-1]["val_mlm_loss"] < 0.7 * history[0]["val_mlm_loss"]
    # a checkpoint carries what fine-tuning needs besides the weights
    assert {"bert-config.json", "tokenizer.json", "state.pt"} <= {p.name for p in pretrained["checkpoint"].iterdir()}
    tokenizer = Tokenizer.from_file(str(pretrained["checkpoint"] / "tokenizer.json"))
    words = set((pretrained["root"] / "corpus.txt").read_text().replace(".", " ").split())
    assert all(len(tokenizer.encode(w, add_special_tokens=False).tokens) == 1 for w in words)  # see TEXT
    ev = pretrained["task"].evaluate(pretrained["models"], pretrained["spec"].data_dir)
    # knowing a word's group alone gives ln(WORDS_PER_GROUP) nats; not even that: ln(2 * WORDS_PER_GROUP)
    assert ev.metrics["mlm_loss"] < np.log(2 * WORDS_PER_GROUP)


def test_fine_tuning_from_the_pretrained_encoder_beats_random_initialisation(pretrained):
    root, ckpt = pretrained["root"], pretrained["checkpoint"]
    held_out = pretrained["held_out"]
    accuracy = {}
    for init in ("pretrained", "scratch"):
        # the same tokenizer for both, so they differ only in the encoder's initial weights
        data = {"source": {"kind": "labelled_text", "path": str(root / "seen.csv")},
                "text": {**TEXT, "tokenizer": str(ckpt / "tokenizer.json")}}
        model = {"kind": "bert_classifier", **ENCODER, "pretrained": str(ckpt) if init == "pretrained" else None}
        s = resolve_inputs(spec(root, f"cls-{init}", data, model, epochs=10, lr=2e-3))
        _, task, models, _ = fit(s, root)
        ev = task.evaluate(models, s.data_dir)
        assert ev.metrics["accuracy"] > 0.9, (init, ev.metrics)  # both learn the words they were shown
        exported = task.export(root / f"export-{init}", models, ev)
        classifier = load_exported(exported)
        assert isinstance(classifier, TextClassifier)
        labels, probability = classifier.predict(list(held_out.text))
        assert ((probability >= 0.5) & (probability <= 1)).all()
        accuracy[init] = float(np.mean(np.array(labels) == held_out.label.to_numpy()))
    # A model gets a held-out word right in all its rows or in none, so accuracy on the 24 held-out words
    # is a mean of 24 coin flips for a model that knows nothing of them: 0.5 +- 0.10; P(>= 0.8) < 0.1%.
    assert accuracy["scratch"] < 0.8, accuracy
    assert accuracy["pretrained"] > 0.9, accuracy


def test_a_mean_pooled_classifier_is_exported_with_its_pooling(pretrained):
    root, ckpt = pretrained["root"], pretrained["checkpoint"]
    data = {"source": {"kind": "labelled_text", "path": str(root / "seen.csv")},
            "text": {**TEXT, "tokenizer": str(ckpt / "tokenizer.json")}}
    model = {"kind": "bert_classifier", **ENCODER, "pretrained": str(ckpt), "pooling": "mean"}
    s = resolve_inputs(spec(root, "cls-mean", data, model, epochs=2, lr=2e-3))
    _, task, models, _ = fit(s, root)
    assert models["model"].pooling == "mean"
    exported = load_exported(task.export(root / "export-mean", models, task.evaluate(models, s.data_dir)))
    assert exported.model.pooling == "mean"
    texts = list(pretrained["held_out"].text[:16])
    trained = TextClassifier(models["model"], exported.tokenizer, exported.meta)  # the model as training left it
    np.testing.assert_allclose(exported.probabilities(texts), trained.probabilities(texts), atol=1e-5)
    as_cls = TextClassifier(type(exported.model)(exported.model.config, exported.model.num_labels), exported.tokenizer,
                            exported.meta)
    as_cls.model.load_state_dict(exported.model.state_dict())
    as_cls.model.eval()
    # the export reads the mean, as training did: the same weights read through [CLS] answer otherwise
    assert not np.allclose(exported.probabilities(texts), as_cls.probabilities(texts), atol=1e-4)


def test_frozen_embeddings_stay_as_pretraining_left_them_while_the_layers_above_learn(pretrained):
    root, ckpt = pretrained["root"], pretrained["checkpoint"]
    data = {"source": {"kind": "labelled_text", "path": str(root / "seen.csv")},
            "text": {**TEXT, "tokenizer": str(ckpt / "tokenizer.json")}}
    model = {"kind": "bert_classifier", **ENCODER, "pretrained": str(ckpt), "freeze_embeddings": True}
    s = resolve_inputs(spec(root, "cls-frozen", data, model, epochs=3, lr=2e-3))
    _, task, models, _ = fit(s, root)
    before = torch.load(ckpt / STATE_FILE, weights_only=True)["models"]["model"]
    after = models["model"].state_dict()
    embeddings = [k for k in after if k.startswith("bert.embeddings.")]
    assert {"bert.embeddings.word.weight", "bert.embeddings.segment.weight"} <= set(embeddings)
    for k in embeddings:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    layer = next(k for k in after if k.startswith("bert.encoder.layers.0.") and k.endswith("weight"))
    assert not torch.equal(after[layer], before[layer])  # the encoder itself fine-tuned
    assert task.evaluate(models, s.data_dir).metrics["accuracy"] > 0.9
    # the frozen tables are not in the optimizer at all: no Adam state, no weight decay pulling them to 0
    fresh = task.build_models()
    optimizer = task.build_optimizers(fresh)["model"]
    tables = {id(p) for p in fresh["model"].bert.embeddings.parameters()}
    assert not tables & {id(p) for g in optimizer.param_groups for p in g["params"]}
    # from random initialisation there is nothing to keep: refused, not trained on a frozen random table
    with pytest.raises(SpecError, match=r"^<spec>: model: freeze_embeddings keeps pretrained embeddings, but "
                                        r"model.pretrained is null"):
        spec(root, "cls-frozen-random", data, {**model, "pretrained": None}, epochs=1, lr=2e-3)


def test_the_classifier_takes_the_pretrained_encoders_sizes_and_tokenizer(pretrained, tmp_path):
    ckpt = pretrained["checkpoint"]
    pd.DataFrame({"text": ["a b", "c d"] * 10, "label": ["x", "y"] * 10}).to_csv(tmp_path / "l.csv", index=False)
    s = resolve_inputs(spec(tmp_path, "c", {"source": {"kind": "labelled_text", "path": str(tmp_path / "l.csv")}},
                            {"kind": "bert_classifier", "hidden": 64, "heads": 4, "pretrained": str(ckpt)}, 1, 1e-3))
    assert s.data.text.tokenizer == str(ckpt / "tokenizer.json")
    assert s.data.text.max_len == TEXT["max_len"]  # not set: the encoder's own length, not the default 128
    manifest, _ = prepare_dataset(s.data, s.data_dir, log=lambda m: None)
    task = build_task(s, manifest)
    assert task.config.hidden == ENCODER["hidden"]  # the checkpoint's, not the 64 asked for from scratch
    bert_config = json.loads((ckpt / "bert-config.json").read_text())
    assert task.config.vocab_size == bert_config["vocab_size"] == manifest.vocab_size
    # a checkpoint that lacks part of the encoder: refused, not fine-tuned from a half-random encoder
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    state = torch.load(broken / "state.pt", weights_only=True)
    key = next(k for k in state["models"]["model"] if ".layers.1." in k)
    del state["models"]["model"][key]
    torch.save(state, broken / "state.pt")
    task = build_task(s.model_copy(update={"model": s.model.model_copy(update={"pretrained": str(broken)})}),
                      manifest)
    with pytest.raises(DataError, match=r"^model.pretrained: .*broken does not hold this encoder \(missing \["):
        task.build_models()
    # rows longer than the encoder has positions for: one line naming the field, before any preparation
    longer = {"source": {"kind": "labelled_text", "path": str(tmp_path / "l.csv")},
              "text": {"max_len": bert_config["max_len"] * 2}}
    with pytest.raises(DataError, match=rf"^data.text.max_len: {bert_config['max_len'] * 2} tokens, but the "
                                        rf"pretrained encoder {ckpt.name} has positions for {bert_config['max_len']}"):
        resolve_inputs(spec(tmp_path, "c2", longer, {"kind": "bert_classifier", "pretrained": str(ckpt)}, 1, 1e-3))


def test_a_plain_run_sizes_the_schedule_for_its_one_process_whatever_scaling_says(tmp_path):
    """scaling.num_workers 2, trained by the loop without Ray: one process sees every row, so the linear
    decay must end at the last update, not halfway (half the updates at learning rate 0)."""
    pd.DataFrame({"text": ["a b c", "d e f"] * 100, "label": ["x", "y"] * 100}).to_csv(tmp_path / "l.csv",
                                                                                       index=False)
    s = spec(tmp_path, "two", {"source": {"kind": "labelled_text", "path": str(tmp_path / "l.csv")},
                               "text": {"max_len": 8, "vocab_size": 60, "min_frequency": 1}},
             {"kind": "bert_classifier", **ENCODER}, 2, 1e-3)
    s = s.model_copy(update={"scaling": s.scaling.model_copy(update={"num_workers": 2}),
                             "train": s.train.model_copy(update={"lr_decay": "linear"})})
    *_, checkpoint = fit(s, tmp_path)
    last_lr = torch.load(checkpoint / STATE_FILE, weights_only=True)["optimizers"]["model"]["param_groups"][0]["lr"]
    assert 0 < last_lr <= 1e-3 / 10
