"""Retrieval with a BERT encoder: texts -> unit vectors, and exact cosine search over them.

    embed    [CLS] text [SEP] (B, T) -> encoder h (B, T, C) -> pool -> v (B, C) -> v / |v|
    search   scores = q V^T (Q, N): the cosine, since every row is unit length -> the k best per query

Pooling is the mean of h over the real tokens ([CLS] and [SEP] included, padding not), by default; `cls`
takes BERT's pooled [CLS] output, tanh(W h_[CLS]), what the NSP head and a fine-tuned classifier read.
The mean is the default because it won on the validation queries of benchmarks/retrieval.py (WordNet:
example sentence -> its gloss) for a deepgen encoder, and because an encoder not trained for sentence
similarity puts little of a sentence into [CLS] (Reimers and Gurevych 2019, Sentence-BERT, table 1:
averaged BERT token vectors 54.8 against the [CLS] vector 29.2 on the STS tasks).

The encoder of a registered `bert_pretrain` model and that of a `bert_classifier` are read alike (their
`bert.*` weights); the heads are not used. Search is exact: one matrix product per block of queries, in
NumPy; an approximate index (faiss) pays off only far beyond the sizes a CPU embeds in minutes.

An index is a Parquet file: `row` (the text's position in the input), `text`, `vector`
(fixed_size_list<float32>[C], unit length), and in the schema metadata under `deepgen.index` the model it
was embedded with (name, version, model_sha256), the pooling and the width, so a search with another
model or pooling is refused instead of ranking vectors from two different spaces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deepgen.errors import DataError
from deepgen.models.bert import POOLINGS, pool_text

DEFAULT_POOLING = "mean"
INDEX_META = b"deepgen.index"
TEXT_FAMILIES = ("bert_encoder", "text_classifier")  # exported folders that hold a BERT encoder


@dataclass(frozen=True)
class ModelIdentity:
    """Which model embedded an index: compared before a search."""

    name: str  # NAME/VERSION, or the folder
    model_sha256: str | None  # of the exported folder (the registry's tag); None for an unregistered folder


class TextEmbedder:
    """A BERT encoder and its tokenizer: texts in, unit-length vectors out."""

    def __init__(self, bert, tokenizer, max_len: int, pooling: str = DEFAULT_POOLING):
        if pooling not in POOLINGS:
            raise DataError(f"pooling: {pooling!r}; give one of {', '.join(POOLINGS)}")
        self.bert, self.tokenizer, self.max_len, self.pooling = bert.eval(), tokenizer, max_len, pooling

    @classmethod
    def load(cls, directory: str | Path, pooling: str = DEFAULT_POOLING, where: str | None = None) -> TextEmbedder:
        """The encoder of an exported bert_pretrain or bert_classifier folder (its heads are left out)."""
        from deepgen.data.tokenizer import WordPieceTokenizer
        from deepgen.export import WEIGHTS, read_meta
        from deepgen.models.bert import BertConfig, BertModel

        directory = Path(directory)
        meta = read_meta(directory)
        if meta.family not in TEXT_FAMILIES:
            raise DataError(f"{where or directory}: not a BERT encoder (model family {meta.family}); embedding "
                            "needs a bert_pretrain or bert_classifier model")
        bert = BertModel(BertConfig(**meta.config))
        state = torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
        bert.load_state_dict({k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")})
        return cls(bert, WordPieceTokenizer.load(directory), meta.extra["max_len"], pooling)

    @property
    def dim(self) -> int:
        return self.bert.config.hidden

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """(N, C) float32 unit vectors. Texts are batched by token count, and each batch is cut to its
        longest row, so short texts do not pay for max_len positions."""
        enc = self.tokenizer.encode_batch(list(texts), self.max_len)
        out = np.zeros((len(enc), self.dim), np.float32)
        order = np.argsort(enc.length, kind="stable")
        for lo in range(0, len(order), batch_size):
            rows = order[lo:lo + batch_size]
            width = int(enc.length[rows].max())
            ids = torch.from_numpy(enc.input_ids[rows, :width].astype(np.int64))  # (B, T)
            mask = torch.from_numpy(enc.attention_mask[rows, :width]).bool()  # (B, T)
            out[rows] = self.pool(ids, mask).numpy()
        return out

    def pool(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, T) -> (B, C) unit vectors."""
        out = self.bert(ids, None, None if bool(mask.all()) else mask)
        return torch.nn.functional.normalize(pool_text(out, mask, self.pooling).float(), dim=-1)


def top_k(queries: np.ndarray, vectors: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine search: queries (Q, C), vectors (N, C), both unit rows -> (indices (Q, k'), scores (Q, k')),
    best first, k' = min(k, N); equal scores in row order."""
    k = min(k, len(vectors))
    indices = np.zeros((len(queries), k), np.int64)
    scores = np.zeros((len(queries), k), np.float32)
    for lo in range(0, len(queries), block):  # bounds the (block, N) score matrix
        s = queries[lo:lo + block] @ vectors.T  # (b, N)
        best = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(k), (len(s), 1))
        best_scores = np.take_along_axis(s, best, 1)
        order = np.lexsort((best, -best_scores), axis=1)  # by score, then by row
        indices[lo:lo + block] = np.take_along_axis(best, order, 1)
        scores[lo:lo + block] = np.take_along_axis(best_scores, order, 1)
    return indices, scores


# --- the index file --------------------------------------------------------------------------------


def index_table(texts: list[str], vectors: np.ndarray, pooling: str, model: ModelIdentity) -> pa.Table:
    n, dim = vectors.shape
    meta = {"model": model.name, "model_sha256": model.model_sha256, "pooling": pooling, "dim": dim}
    table = pa.table({
        "row": pa.array(np.arange(n, dtype=np.int64)),
        "text": pa.array(texts, pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim),
    })
    return table.replace_schema_metadata({INDEX_META: json.dumps(meta).encode()})


@dataclass
class Index:
    rows: np.ndarray  # (N,) int64
    texts: list[str]
    vectors: np.ndarray  # (N, C) float32, unit rows
    model: str
    model_sha256: str | None
    pooling: str


def read_index(path: str | Path) -> Index:
    """An index written by `deepgen embed`, or a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a Parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    raw = (table.schema.metadata or {}).get(INDEX_META)
    if raw is None or not {"row", "text", "vector"} <= set(table.column_names):
        raise DataError(f"{path}: not an index written by `deepgen embed` (no {INDEX_META.decode()} metadata or "
                        "row/text/vector columns)")
    meta = json.loads(raw)
    if table.num_rows == 0:
        raise DataError(f"{path}: the index holds no vectors")
    vectors = np.asarray(table.column("vector").combine_chunks().flatten().to_numpy(), np.float32)
    return Index(table.column("row").to_numpy(), table.column("text").to_pylist(),
                 vectors.reshape(table.num_rows, meta["dim"]), meta["model"], meta.get("model_sha256"),
                 meta["pooling"])


def check_index_model(index: Index, path: str | Path, model: ModelIdentity) -> None:
    """Refuse an index embedded with another model: its vectors live in another space."""
    same = index.model_sha256 == model.model_sha256 if index.model_sha256 and model.model_sha256 \
        else index.model == model.name
    if not same:
        raise DataError(f"{path}: embedded with {index.model}, not {model.name}; search with --model "
                        f"{index.model} or embed the texts again with this model")
