"""Text sources -> tokenized train/val/test Parquet + tokenizer.json + manifest, written atomically.

Two preparations, both laid out like the image and table datasets (`deepgen.data.prepare`):

    pretraining (BERT MLM + NSP)                    classification
    DIR/{train,val,test}.parquet                    DIR/{train,val,test}.parquet
      input_ids    fixed_size_list<int32>[max_len]    input_ids, segment_ids, length  (same types)
      segment_ids  fixed_size_list<int8>[max_len]     label        int64, index into class_names
      length       int32  (attention mask = position < length)
      is_next      int8   (1: B follows A in its document)
    DIR/tokenizer.json  DIR/manifest.json

Documents, not sentences, are split into train/val/test (seeded) before any pair is made, and a "not
next" B is drawn from another document of the same split, so no sentence crosses splits. The tokenizer
is trained on the training split only. Everything is written into a hidden sibling folder and renamed
into place, so a failure leaves the previous dataset or nothing; an unchanged source and spec is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from deepgen.config import LabelledTextSource, TextFilesSource, TextSpec, TextTableSource
from deepgen.data.dataset import read_manifest_as
from deepgen.data.sources import load_table
from deepgen.data.tokenizer import TOKENIZER_FILE, Encoded, WordPieceTokenizer
from deepgen.errors import DataError

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


TextSource = TextFilesSource | TextTableSource | LabelledTextSource


class TextManifest(BaseModel):
    format: int = FORMAT_VERSION
    task: Literal["pretraining", "classification"]
    fingerprint: str  # source bytes + specs (+ given tokenizer): equal fingerprints mean equal outputs
    source_fingerprint: str
    tokenizer_file: str = TOKENIZER_FILE
    tokenizer_fingerprint: str
    vocab_size: int
    special_ids: dict[str, int]
    max_len: int
    rows: dict[str, int]
    truncated: dict[str, float]  # share of rows cut to max_len, per split
    documents: dict[str, int] | None = None  # pretraining
    sentences: dict[str, int] | None = None  # pretraining
    nsp_balance: dict[str, float] | None = None  # pretraining: share of is_next = 1, per split
    class_names: list[str] | None = None  # classification: label i is class_names[i]
    label_type: Literal["str", "int"] | None = None  # classification: the labels' type in the source
    label_counts: dict[str, list[int]] | None = None  # classification: rows per class, per split
    arrow_schema: dict[str, str]


# --- reading -------------------------------------------------------------------------------------------

# A boundary is . ! or ? (with any closing quotes or brackets) then whitespace, then what may open a
# sentence: a capital, a digit, or an opening quote or bracket.
_BOUNDARY = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s+["'\u201c\u2018(\[]?[A-Z0-9])""")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs cf fig figs al approx dept est gen gov lt col sgt capt rev e.g i.e u.s".split())
_ENDS_SENTENCE = re.compile(r"""[.!?]["'\u201d\u2019)\]]*$""")


def split_sentences(text: str) -> list[str]:
    """Running text -> sentences, at . ! ? before a capital or digit, except after common
    abbreviations (Dr., e.g.) and initials (J. R. R.)."""
    text = " ".join(text.split())  # single spaces only, so rfind below finds the last word
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        # only the last word before the boundary is read, not the sentence so far: after an abbreviation
        # `start` stays put, and re-reading would make a run of them quadratic
        end = match.start()
        if end > start and text[end - 1] == " ":  # "Dr ." : the word before the space
            end -= 1
        last = text[max(start, text.rfind(" ", start, end) + 1):end].lower().lstrip("\"'(")
        if text[match.start()] == "." and (last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())):
            continue
        sentences.append(text[start:match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    return [s for s in sentences + [tail] if s]


def parse_documents(text: str, sentence_split: str = "auto") -> list[list[str]]:
    """Blank-line separated blocks -> documents, each a list of sentences; empty blocks are dropped."""
    documents = []
    for block in re.split(r"\n[ \t\r\f\v]*\n", text.replace("\r\n", "\n")):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        if sentence_split == "lines":
            sentences = lines
        elif sentence_split == "auto" and all(_ENDS_SENTENCE.search(line) for line in lines):
            sentences = [s for line in lines for s in split_sentences(line)]
        else:
            sentences = split_sentences(" ".join(lines))
        documents.append(sentences)
    return documents


@dataclass
class TextCorpus:
    documents: list[list[str]]  # each document a list of sentences, none empty
    files: list[int] | None = None  # the file each document came from (text_files sources), else None


@dataclass
class LabelledTexts:
    texts: list[str]
    labels: np.ndarray  # (N,) int64 index into class_names
    class_names: list[str]
    label_type: Literal["str", "int"]


def source_fingerprint(source: TextSource) -> str:
    """A hash of the bytes a source reads, computed before any parsing so an up-to-date rerun is cheap."""
    if source.kind == "text_files":
        files = _expand_paths(source.paths)
    else:  # a table file, or a folder of Parquet parts
        table = Path(source.path).expanduser()
        files = sorted(f for f in table.rglob("*") if f.is_file()) if table.is_dir() else [table]
    digest = hashlib.sha256()
    for path in files:
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_text_files(source: TextFilesSource) -> TextCorpus:
    files = _expand_paths(source.paths)
    documents, origin = [], []
    for i, path in enumerate(files):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start}); convert it, e.g. iconv -t UTF-8") from None
        found = parse_documents(text, source.sentence_split)
        documents += found
        origin += [i] * len(found)
    if not documents:
        raise DataError(f"{', '.join(map(str, files))}: no text found")
    return TextCorpus(documents, origin)


def _expand_paths(paths: list[str]) -> list[Path]:
    files = []
    for name in paths:
        p = Path(name).expanduser()
        if p.is_dir():
            found = sorted(p.rglob("*.txt"))
            if not found:
                raise DataError(f"{name}: folder holds no *.txt files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{name}: no such file")
    return files


def read_text_table(source: TextTableSource) -> TextCorpus:
    table = load_table(source.path)
    texts = text_column(table, source.text_column, source.path)
    if source.document_column is None:
        keys = range(len(texts))
    else:
        keys = document_ids(table, source.document_column, source.path)
    grouped: dict = {}
    for key, text in zip(keys, texts):
        grouped.setdefault(key, []).extend(split_sentences(text))
    documents = [d for d in grouped.values() if d]
    if not documents:
        raise DataError(f"{source.path}: column {source.text_column!r} holds no text")
    return TextCorpus(documents)


def document_ids(table: pa.Table, name: str, where: str) -> list:
    """The document of each row, refusing nulls and NaN: nulls would merge unrelated rows into one
    document, and each NaN (NaN != NaN) would start a document of its own."""
    col = _complete_column(table, name, where, "document ids")
    if pa.types.is_floating(col.type) and (nan := pc.sum(pc.is_nan(col)).as_py()):
        raise DataError(f"{where}: column {name!r} has {nan} NaN document ids; give every row a document id")
    return col.to_pylist()


def read_labelled_text(source: LabelledTextSource) -> LabelledTexts:
    table = load_table(source.path)
    _require_columns(table, [source.text_column, source.label_column], source.path)
    if table.num_rows == 0:
        raise DataError(f"{source.path}: holds no rows; classification needs labelled texts")
    texts = text_column(table, source.text_column, source.path)
    labels, class_names, label_type = label_column(table, source.label_column, source.path)
    if len(class_names) < 2:
        raise DataError(f"{source.path}: column {source.label_column!r} holds one class ({class_names[0]!r}); "
                        "classification needs at least two")
    return LabelledTexts(texts, labels, class_names, label_type)


def _complete_column(table: pa.Table, name: str, where: str, what: str):
    """Column `name`, dictionary-decoded, refused if missing or holding nulls."""
    _require_columns(table, [name], where)
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(pa.string())
    if col.null_count:
        raise DataError(f"{where}: column {name!r} has {col.null_count} missing {what}")
    return col


def text_column(table: pa.Table, name: str, where: str) -> list[str]:
    """A column of text as Python strings, refusing missing, empty-typed or non-text columns."""
    col = _complete_column(table, name, where, "texts")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.to_pylist()
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):  # a CSV with non-UTF-8 bytes
        values = col.to_pylist()
        for i, v in enumerate(values):
            try:
                values[i] = v.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where}: column {name!r} is not UTF-8 text (row {i}); convert the file") from None
        return values
    raise DataError(f"{where}: column {name!r} is {col.type}, expected text")


def label_column(table: pa.Table, name: str, where: str) -> tuple[np.ndarray, list[str], str]:
    """Labels -> (int64 indices into the sorted class list, class names, "str" or "int")."""
    col = _complete_column(table, name, where, "labels")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        label_type = "str"
    elif pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        label_type = "int"
    else:
        raise DataError(f"{where}: column {name!r} is {col.type}, expected string or integer labels")
    values = np.asarray(col.to_numpy(zero_copy_only=False))
    classes, labels = np.unique(values.astype(np.int64) if label_type == "int" else values, return_inverse=True)
    return labels.astype(np.int64), [str(c) for c in classes.tolist()], label_type


def _require_columns(table: pa.Table, names: list[str], where: str) -> None:
    for name in names:
        if name not in table.column_names:
            raise DataError(f"{where}: no column {name!r} (columns: {', '.join(table.column_names)})")


# --- splits and sentence pairs --------------------------------------------------------------------


def split_documents(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded split of document indices; NSP needs two documents per split (a "not next" B comes from
    another document of the same split)."""
    if n < 6:
        raise DataError(f"text: {n} documents; NSP needs at least 2 per split (6 in all): separate "
                        "documents with a blank line, or give more text")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(2, round(n * test_fraction))
    n_val = max(2, round(n * val_fraction))
    if n - n_test - n_val < 2:
        raise DataError(f"text: {n} documents leave fewer than 2 for training after val/test; give more text "
                        "or lower data.val_fraction / data.test_fraction")
    return {"train": order[n_test + n_val:], "val": order[n_test:n_test + n_val], "test": order[:n_test]}


@dataclass
class SentencePairs:
    """NSP pairs over a flat sentence list: row i is (sentences[a[i]], sentences[b[i]])."""

    sentences: list[str]
    a: np.ndarray  # (P,) int64
    b: np.ndarray  # (P,) int64
    is_next: np.ndarray  # (P,) int8
    document: np.ndarray  # (S,) int64: the document of each sentence


def make_nsp_pairs(documents: list[list[str]], rng: np.random.Generator, next_fraction: float = 0.5,
                   groups: np.ndarray | list[int] | None = None) -> SentencePairs:
    """One pair per sentence A that has a successor in its document (Devlin et al. 2019, sec. 3.1):
    B = that successor (is_next = 1) for round(next_fraction * P) pairs chosen at random, else a random
    sentence of a random other document (is_next = 0).

    groups: a group per document (the file it came from). When there are several, the other document is
    drawn from A's own group (any other document where A's group has no other), so that a corpus of
    several files (dictionary glosses beside tweets) does not turn "not next" into "from another file",
    a cue that would let NSP be solved without reading the pair."""
    if len(documents) < 2:
        raise DataError("text: NSP needs at least two documents to draw 'not next' sentences from")
    lengths = np.array([len(d) for d in documents], np.int64)
    starts = np.cumsum(lengths) - lengths
    document = np.repeat(np.arange(len(documents)), lengths)  # (S,)
    position = np.arange(len(document)) - starts[document]
    a = np.flatnonzero(position < lengths[document] - 1)  # every sentence with a successor
    n = len(a)
    is_next = np.zeros(n, np.int8)
    is_next[rng.permutation(n)[:round(n * next_fraction)]] = 1
    if groups is None or len(np.unique(groups)) < 2:
        other = rng.integers(0, len(documents) - 1, n)
        other += other >= document[a]  # uniform over the documents other than A's
    else:
        other = _other_in_group(np.asarray(groups), document[a], rng)
    random_b = starts[other] + (rng.random(n) * lengths[other]).astype(np.int64)
    b = np.where(is_next == 1, a + 1, random_b)
    return SentencePairs([s for d in documents for s in d], a, b, is_next, document)


def _other_in_group(groups: np.ndarray, own: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each document index in `own`, another document drawn uniformly from its own group (`groups`: one
    label per document); from any other document where its group holds no other."""
    order = np.argsort(groups, kind="stable")  # documents sorted by group
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))  # each document's place in that order
    _, first, size = np.unique(groups[order], return_index=True, return_counts=True)
    g = np.searchsorted(groups[order][first], groups[own])  # each A's group, as an index into first/size
    lone = size[g] < 2
    pick = first[g] + (rng.random(len(own)) * np.maximum(size[g] - 1, 1)).astype(np.int64)
    pick += pick >= rank[own]  # skip A's own document within its group
    other = order[np.minimum(pick, len(order) - 1)]
    if lone.any():  # no other document in the group: any other document
        anywhere = rng.integers(0, len(groups) - 1, int(lone.sum()))
        other[lone] = anywhere + (anywhere >= own[lone])
    return other


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Row indices per split, each class divided in the same proportions."""
    rng = np.random.default_rng(seed)
    parts = {name: [] for name in SPLITS}
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_test, n_val = round(len(rows) * test_fraction), round(len(rows) * val_fraction)
        parts["test"].append(rows[:n_test])
        parts["val"].append(rows[n_test:n_test + n_val])
        parts["train"].append(rows[n_test + n_val:])
    splits = {name: np.sort(np.concatenate(p)) for name, p in parts.items()}
    for name, rows in splits.items():
        if len(rows) == 0:
            raise DataError(f"text: the {name} split would be empty ({len(labels)} rows); give more rows "
                            "or change data.val_fraction / data.test_fraction")
    return splits


# --- preparation ---------------------------------------------------------------------------------------


def prepare_text(source: TextSource, out_dir: str | Path, text: TextSpec | None = None, *,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                 log=print) -> tuple[TextManifest, bool]:
    """Labelled text -> classification dataset; unlabelled text -> NSP pretraining dataset."""
    prepare = prepare_classification if source.kind == "labelled_text" else prepare_pretraining
    return prepare(source, out_dir, text, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, log=log)


def prepare_pretraining(source: TextFilesSource | TextTableSource, out_dir: str | Path, text: TextSpec | None = None,
                        *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                        log=print) -> tuple[TextManifest, bool]:
    """Write NSP sentence pairs of `source` to `out_dir` unless an up-to-date copy is there.
    Returns (manifest, wrote)."""
    text = text or TextSpec()
    out_dir = Path(out_dir)
    source_bytes = source_fingerprint(source)
    fingerprint = _fingerprint(source, text, source_bytes, val_fraction, test_fraction, seed)
    if (current := _current(out_dir, fingerprint, log)) is not None:
        return current, False
    corpus = read_text_files(source) if source.kind == "text_files" else read_text_table(source)

    doc_splits = split_documents(len(corpus.documents), val_fraction, test_fraction, seed)
    train_sentences = [s for i in doc_splits["train"] for s in corpus.documents[i]]
    tokenizer = _tokenizer(text, train_sentences)
    rng = np.random.default_rng(seed + 1)  # the split used `seed`; pairs get their own stream
    tables, stats = {}, {"documents": {}, "sentences": {}, "nsp_balance": {}, "truncated": {}}
    for name, doc_ids in doc_splits.items():
        groups = None if corpus.files is None else [corpus.files[i] for i in doc_ids]
        pairs = make_nsp_pairs([corpus.documents[i] for i in doc_ids], rng, text.next_fraction, groups)
        if len(pairs.a) == 0:
            raise DataError(f"text: the {name} split has no document with two sentences, so no NSP pairs")
        pieces = tokenizer.pieces(pairs.sentences)
        enc = tokenizer.assemble(pieces, pairs.a, pairs.b, text.max_len)
        full = pieces.lengths[pairs.a] + pieces.lengths[pairs.b] + 3
        tables[name] = _encoded_table(enc, is_next=pa.array(pairs.is_next, pa.int8()))
        stats["documents"][name] = len(doc_ids)
        stats["sentences"][name] = len(pairs.sentences)
        stats["nsp_balance"][name] = round(float(pairs.is_next.mean()), 4)
        stats["truncated"][name] = round(float((full > text.max_len).mean()), 4)
    manifest = _manifest("pretraining", fingerprint, source_bytes, tokenizer, text, tables, **stats)
    write_text_dataset(out_dir, tables, tokenizer, manifest)
    log(f"prepare: wrote {out_dir} ({', '.join(f'{k} {v}' for k, v in manifest.rows.items())} sentence pairs, "
        f"vocabulary {tokenizer.vocab_size})")
    return manifest, True


def prepare_classification(source: LabelledTextSource, out_dir: str | Path, text: TextSpec | None = None, *,
                           val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                           log=print) -> tuple[TextManifest, bool]:
    """Write `[CLS] text [SEP]` rows with integer labels to `out_dir` unless an up-to-date copy is there.
    Uses `text.tokenizer` (the pretrained model's) when given, else trains one on the training split."""
    text = text or TextSpec()
    out_dir = Path(out_dir)
    source_bytes = source_fingerprint(source)
    fingerprint = _fingerprint(source, text, source_bytes, val_fraction, test_fraction, seed)
    if (current := _current(out_dir, fingerprint, log)) is not None:
        return current, False
    data = read_labelled_text(source)

    splits = stratified_split(data.labels, val_fraction, test_fraction, seed)
    tokenizer = _tokenizer(text, [data.texts[i] for i in splits["train"]])
    tables, truncated, counts = {}, {}, {}
    for name, rows in splits.items():
        pieces = tokenizer.pieces([data.texts[i] for i in rows])
        enc = tokenizer.assemble(pieces, np.arange(len(rows)), None, text.max_len)
        tables[name] = _encoded_table(enc, label=pa.array(data.labels[rows], pa.int64()))
        truncated[name] = round(float((pieces.lengths + 2 > text.max_len).mean()), 4)
        counts[name] = np.bincount(data.labels[rows], minlength=len(data.class_names)).tolist()
    manifest = _manifest("classification", fingerprint, source_bytes, tokenizer, text, tables,
                         truncated=truncated, class_names=data.class_names, label_type=data.label_type,
                         label_counts=counts)
    write_text_dataset(out_dir, tables, tokenizer, manifest)
    log(f"prepare: wrote {out_dir} ({', '.join(f'{k} {v}' for k, v in manifest.rows.items())} rows, "
        f"{len(data.class_names)} classes)")
    return manifest, True


def _tokenizer(text: TextSpec, train_texts: list[str]) -> WordPieceTokenizer:
    """The given tokenizer, or one trained on the training split only (val/test text stays unseen)."""
    if text.tokenizer:
        return WordPieceTokenizer.load(text.tokenizer)
    return WordPieceTokenizer.train(train_texts, text.vocab_size, text.min_frequency, length=len(train_texts))


def _fingerprint(source, text: TextSpec, source_bytes: str, val_fraction: float, test_fraction: float,
                 seed: int) -> str:
    """Hashes only the text fields that shape this kind of dataset, so changing another (next_fraction of a
    classification dataset, vocab_size beside a given tokenizer, where that tokenizer lies) rewrites nothing."""
    path = Path(text.tokenizer).expanduser() if text.tokenizer else None
    if path is not None and path.is_dir():  # a folder holding a tokenizer.json, as `load` takes
        path = path / TOKENIZER_FILE
    given = hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None
    used = {"max_len"} | ({"next_fraction"} if source.kind != "labelled_text" else set()) \
        | (set() if text.tokenizer else {"vocab_size", "min_frequency"})  # a given one counts by its bytes
    blob = json.dumps({
        "source": source.model_dump(mode="json"), "text": text.model_dump(mode="json", include=used),
        "split": [val_fraction, test_fraction, seed], "source_bytes": source_bytes,
        "tokenizer_bytes": given, "format": FORMAT_VERSION,
        **({"nsp_negatives": "same_file"} if source.kind != "labelled_text" else {}),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _current(out_dir: Path, fingerprint: str, log) -> TextManifest | None:
    from deepgen.data.dataset import splits_present

    current = read_text_manifest(out_dir)
    if current is not None and current.fingerprint == fingerprint and splits_present(out_dir, current.rows):
        log(f"prepare: {out_dir} is up to date (fingerprint {fingerprint[:12]}), nothing to do")
        return current
    return None


def _encoded_table(enc: Encoded, **extra: pa.Array) -> pa.Table:
    n, max_len = enc.input_ids.shape
    columns = {
        "input_ids": pa.FixedSizeListArray.from_arrays(pa.array(enc.input_ids.ravel(), pa.int32()), max_len),
        "segment_ids": pa.FixedSizeListArray.from_arrays(pa.array(enc.segment_ids.ravel(), pa.int8()), max_len),
        "length": pa.array(enc.length, pa.int32()),
        **extra,
    }
    return pa.table(columns).replace_schema_metadata({b"deepgen.prepared": b"1"})


def _manifest(task, fingerprint, source_bytes, tokenizer: WordPieceTokenizer, text: TextSpec,
              tables: dict[str, pa.Table], **fields) -> TextManifest:
    return TextManifest(
        task=task, fingerprint=fingerprint, source_fingerprint=source_bytes,
        tokenizer_fingerprint=tokenizer.fingerprint, vocab_size=tokenizer.vocab_size,
        special_ids=tokenizer.special_ids, max_len=text.max_len,
        rows={k: t.num_rows for k, t in tables.items()},
        arrow_schema={f.name: str(f.type) for f in tables["train"].schema}, **fields,
    )


def read_text_manifest(directory: str | Path) -> TextManifest | None:
    return read_manifest_as(TextManifest, directory)


def load_tokenizer(directory: str | Path) -> WordPieceTokenizer:
    """The tokenizer a prepared text dataset was encoded with."""
    return WordPieceTokenizer.load(Path(directory) / TOKENIZER_FILE)


def write_text_dataset(out_dir: Path, tables: dict[str, pa.Table], tokenizer: WordPieceTokenizer,
                       manifest: TextManifest) -> None:
    """The splits, the tokenizer and the manifest, swapped into place atomically (as image datasets are)."""
    from deepgen.data.dataset import write_atomically

    write_atomically(out_dir, tables, manifest, extra=lambda folder: tokenizer.save(folder / TOKENIZER_FILE))
