"""Embedding and exact cosine search (deepgen.retrieval), without Ray or a registry: the registered-model
path is in test_encoder_e2e.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepgen.data.tokenizer import WordPieceTokenizer
from deepgen.errors import DataError
from deepgen.models.bert import BertConfig, BertModel
from deepgen.retrieval import (
    ModelIdentity,
    TextEmbedder,
    check_index_model,
    index_table,
    read_index,
    top_k,
)

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "red and blue paint", "cats and dogs",
         "the mat was red", "a very long sentence about a cat that sat on a mat in a park with a dog"]


@pytest.fixture(scope="module")
def embedder_parts():
    tokenizer = WordPieceTokenizer.train(TEXTS * 3, vocab_size=80, min_frequency=1)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden=16, layers=2, heads=2, intermediate=32,
                                max_len=32))
    return bert, tokenizer


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_texts_vector_is_unit_length_and_the_same_alone_or_beside_longer_texts(embedder_parts, pooling):
    bert, tokenizer = embedder_parts
    embedder = TextEmbedder(bert, tokenizer, max_len=32, pooling=pooling)
    together = embedder.embed(TEXTS, batch_size=4)  # batches cut to their longest row, in length order
    alone = np.concatenate([embedder.embed([t]) for t in TEXTS])
    assert together.shape == (len(TEXTS), 16) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)
    assert np.allclose(together, alone, atol=1e-5)


def test_mean_pooling_averages_the_real_tokens_and_cls_is_the_pooled_output(embedder_parts):
    bert, tokenizer = embedder_parts
    enc = tokenizer.encode(TEXTS[0], 32)
    ids = torch.tensor(enc.input_ids[: int(enc.length)], dtype=torch.long)[None]
    with torch.no_grad():
        h, pooled = bert.eval()(ids)
    mean = TextEmbedder(bert, tokenizer, 32, "mean").embed([TEXTS[0]])[0]
    cls = TextEmbedder(bert, tokenizer, 32, "cls").embed([TEXTS[0]])[0]
    assert np.allclose(mean, torch.nn.functional.normalize(h[0].mean(0), dim=0).numpy(), atol=1e-5)
    assert np.allclose(cls, torch.nn.functional.normalize(pooled[0], dim=0).numpy(), atol=1e-5)
    with pytest.raises(DataError, match="pooling: 'max'"):
        TextEmbedder(bert, tokenizer, 32, "max")


def test_top_k_is_the_exact_cosine_ranking():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:20] + 0.01 * rng.normal(size=(20, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows, scores = top_k(queries, vectors, 5, block=7)
    expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :5]
    assert (rows == expected).all() and (rows[:, 0] == np.arange(20)).all()
    assert np.allclose(scores, np.take_along_axis(queries @ vectors.T, expected, 1))
    rows, scores = top_k(queries[:2], vectors[:3], 10)  # k beyond the index: all of it, best first
    assert rows.shape == (2, 3) and (np.diff(scores, axis=1) <= 0).all()
    tied = np.ones((4, 2), np.float32) / np.sqrt(2)
    assert top_k(tied[:1], tied, 3)[0].tolist() == [[0, 1, 2]]  # equal scores: in row order


def test_an_index_round_trips_and_refuses_another_model(tmp_path):
    import pyarrow.parquet as pq

    vectors = np.eye(3, 4, dtype=np.float32)
    model = ModelIdentity("enc/2", "abc")
    pq.write_table(index_table(["a", "b", "c"], vectors, "mean", model), tmp_path / "v.parquet")
    index = read_index(tmp_path / "v.parquet")
    assert index.texts == ["a", "b", "c"] and np.array_equal(index.vectors, vectors)
    assert (index.model, index.model_sha256, index.pooling) == ("enc/2", "abc", "mean")
    check_index_model(index, "v.parquet", ModelIdentity("enc/3", "abc"))  # the same files under another version
    with pytest.raises(DataError, match="v.parquet: embedded with enc/2, not enc/3"):
        check_index_model(index, "v.parquet", ModelIdentity("enc/3", "def"))
    with pytest.raises(DataError, match="no such file"):
        read_index(tmp_path / "missing.parquet")


def test_a_model_that_is_not_a_bert_encoder_is_refused_in_one_line(tmp_path):
    from deepgen.data.manifest import Scaler
    from deepgen.export import META, ModelMeta

    meta = ModelMeta(family="anomaly", kind="dense_autoencoder", config={}, shape=[4], scaler=Scaler(),
                     feature_names=None, extra={})
    (tmp_path / META).write_text(meta.model_dump_json())
    with pytest.raises(DataError, match=r"detector@champion: not a BERT encoder \(model family anomaly\)"):
        TextEmbedder.load(tmp_path, where="detector@champion")
