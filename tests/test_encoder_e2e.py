"""The encoder's other uses through the real pipeline and registry (local Ray, SQLite MLflow): a tiny
bert_pretrain model and a bert_classifier fine-tuned from a local Hugging Face checkpoint are registered,
then `deepgen embed` and `deepgen search` run on each. Two TorchTrainer runs in all."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from test_hf_bert import write_checkpoint

from deepgen import cli

pytestmark = pytest.mark.ray

PIPELINES = os.path.join(os.path.dirname(__file__), "..", "pipelines")
SMALL = ("model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64", "scaling.num_workers=1",
         "train.epochs=1", "data.text.max_len=16")


def _sets(*items: str) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.strip().splitlines()]


def test_embed_and_search_with_a_pretrained_encoder_and_a_classifier_from_a_hf_checkpoint(
        ray_local, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    topics = [["cat", "dog", "bird", "fish"], ["red", "blue", "green", "pink"]]
    docs = ["\n".join(" ".join(rng.choice(topics[d % 2], 4)) + "." for _ in range(4)) for d in range(60)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(docs))
    assert cli.main(["run", f"{PIPELINES}/bert_pretrain.yaml", *_sets(
        *SMALL, f"data.source.paths=[{tmp_path / 'corpus.txt'}]", "data.text.vocab_size=60",
        "data.text.min_frequency=1")]) == 0

    # a bert_classifier whose encoder is a Hugging Face checkpoint on disk
    hf = write_checkpoint(tmp_path / "bert-tiny")
    pd.DataFrame({"text": ["a happy day", "a sad day", "the happy dog", "the sad cat"] * 10,
                  "label": ["pos", "neg"] * 20}).to_csv(tmp_path / "labelled.csv", index=False)
    assert cli.main(["run", f"{PIPELINES}/bert_sentiment.yaml", *_sets(
        *SMALL, f"model.pretrained={hf}", f"data.source.path={tmp_path / 'labelled.csv'}")]) == 0
    uri = f"sqlite:///{tmp_path / 'deepgen-runs' / 'mlflow.db'}"
    classifier = MlflowClient(uri, uri).get_model_version_by_alias("bert-sentiment", "champion")
    assert classifier.tags["initialisation"] == "pretrained"
    assert classifier.tags["pretrained"].startswith("hf-bert-tiny-")
    capsys.readouterr()
    assert cli.main(["predict", "--model", "bert-sentiment@champion", "--text", "a happy day", "--json"]) == 0
    assert _json_lines(capsys.readouterr().out)[0]["label"] in ("pos", "neg")

    texts = ["cat dog bird fish.", "red blue green pink.", "dog dog cat.", "pink red red.", "fish bird."]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    for model, dim in (("bert-wordnet@champion", 32), ("bert-sentiment@champion", 16)):
        out = tmp_path / f"{model.split('@')[0]}.parquet"
        assert cli.main(["embed", "--model", model, "--input", "texts.txt", "--output", str(out), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary == {"output": str(out), "texts": 5, "dim": dim, "model": f"{model.split('@')[0]}/1",
                           "pooling": "mean"}
        table = pq.read_table(out)
        assert table.column("text").to_pylist() == texts and table.column("row").to_pylist() == list(range(5))
        vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
        assert vectors.shape == (5, dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left

        # an indexed text finds itself first (cosine 1), and the hits come best first
        assert cli.main(["search", "--model", model, "--index", str(out), "--query", texts[3],
                         "--query", "blue", "--k", "3", "--json"]) == 0
        first, second = _json_lines(capsys.readouterr().out)
        assert first["query"] == texts[3] and first["hits"][0]["text"] == texts[3]
        assert first["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3) and first["hits"][0]["row"] == 3
        assert len(second["hits"]) == 3
        assert [h["score"] for h in second["hits"]] == sorted((h["score"] for h in second["hits"]), reverse=True)
        assert cli.main(["search", "--model", model, "--index", str(out), "--input", "texts.txt", "--k", "50"]) == 0
        printed = capsys.readouterr().out
        assert printed.count("query: ") == 5 and printed.count("  row ") == 25  # k beyond the index: all of it

    # refused in one line, nothing written or replaced
    index = tmp_path / "bert-wordnet.parquet"
    before = index.read_bytes()
    cases = [  # (argv, message, exit status: 2 a usage error, 1 unusable data)
        (["search", "--model", "bert-sentiment@champion", "--index", str(index), "--query", "x"],
         "embedded with bert-wordnet/1, not bert-sentiment/1", 1),
        (["embed", "--model", "bert-wordnet@champion", "--text", "x", "--output", str(index)], "already exists", 2),
        (["embed", "--model", "bert-wordnet@champion", "--input", "nope.txt", "--output", "new.parquet"],
         "nope.txt: no such file", 1),
        (["embed", "--model", "bert-wordnet@champion", "--text", "x", "--output", "v.csv"],
         "give --output FILE.parquet", 2),
        (["search", "--model", "bert-wordnet@champion", "--index", "texts.txt", "--query", "x"],
         "not a Parquet file", 1),
        (["search", "--model", "bert-wordnet@champion", "--index", str(index)], "no queries; give --query", 2),
        (["search", "--model", "bert-wordnet@champion", "--index", "labelled.csv", "--query", "x"],
         "not a Parquet", 1),
    ]
    for argv, message, status in cases:
        assert cli.main(argv) == status, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("deepgen: error:") and message in err, err
    assert index.read_bytes() == before and not (tmp_path / "new.parquet").exists()
    pq.write_table(pq.read_table(index).drop_columns(["vector"]), tmp_path / "plain.parquet")
    assert cli.main(["search", "--model", "bert-wordnet@champion", "--index", "plain.parquet", "--query", "x"]) == 1
    assert "not an index written by `deepgen embed`" in capsys.readouterr().err
