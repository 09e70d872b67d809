"""A BERT WordPiece tokenizer: trained with HF `tokenizers`, saved as one `tokenizer.json`, used offline.

Layout of an encoded row (Devlin et al. 2019, fig. 2), padded with [PAD] to a fixed `max_len`:

    input_ids    [CLS] a1 a2 ... [SEP] b1 b2 ... [SEP] [PAD] ...
    segment_ids    0   0  0  ...   0   1  1  ...   1     0   ...
    length       the number of real tokens; the attention mask is `position < length`

Pairs too long for `max_len` are truncated longest-first, as `tokenizers` does it: the shorter of A and B
keeps up to half the room and the longer gets the rest, so neither sentence is dropped whole.

Encoding tokenizes each text once (`pieces`) and assembles rows in NumPy (`assemble`): the same ids as the
saved TemplateProcessing with longest_first truncation, without tokenizing a sentence again for every pair
it is in, and without the library's overflow bookkeeping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from deepgen.errors import DataError, first_line

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # trained vocabularies hold them at ids 0-4, in this order
TOKENIZER_FILE = "tokenizer.json"
_CHUNK = 8192  # rows assembled at a time
_ENCODE_CHUNK = 50_000  # texts tokenized at a time: the library's Encoding objects take ~3 KB each


@dataclass(frozen=True)
class Encoded:
    """A batch of fixed-length rows; index it with a row number or slice for a sub-batch."""

    input_ids: np.ndarray  # (N, L) int32
    segment_ids: np.ndarray  # (N, L) int8: 0 for [CLS] A [SEP] (and padding), 1 for B [SEP]
    length: np.ndarray  # (N,) int32: real tokens per row, the rest is [PAD]

    @property
    def attention_mask(self) -> np.ndarray:
        """(N, L) int8: 1 on real tokens, 0 on padding."""
        return (np.arange(self.input_ids.shape[-1]) < self.length[..., None]).astype(np.int8)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index) -> Encoded:
        return Encoded(self.input_ids[index], self.segment_ids[index], self.length[index])


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2,
                    length: int | None = None):
    """Learn a lowercase WordPiece vocabulary from `texts`; returns a `tokenizers.Tokenizer`.

    The five special tokens come first, so their ids are fixed whatever the corpus. The same texts give
    the same vocabulary and ids on every run: the `tokenizers` trainer numbers continuation pieces ("##e")
    in hash-map order as it meets them, and those numbers break ties between equally frequent merges
    (huggingface/tokenizers issue 1794), so it is handed every continuation piece up front, in sorted order.
    """
    from tokenizers import models, trainers

    if vocab_size <= len(SPECIAL_TOKENS):
        raise DataError(f"vocab_size {vocab_size} leaves no room beside the {len(SPECIAL_TOKENS)} special tokens")
    texts = texts if isinstance(texts, list | tuple) else list(texts)  # read twice
    words = _bare(models.WordLevel(unk_token=UNK))
    words.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=2**31 - 1, min_frequency=0,
                                                               show_progress=False), length=length)
    pieces = sorted({f"##{c}" for word in words.get_vocab() for c in word[1:]})
    trained = _bare(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[*SPECIAL_TOKENS, *pieces],
        continuing_subword_prefix="##", show_progress=False,
    )
    trained.train_from_iterator(texts, trainer=trainer, length=length)
    # the same vocabulary in a fresh tokenizer, where only the five are special (the trainer made every
    # piece it was handed an added special token, which decoding would drop)
    tok = _bare(models.WordPiece(vocab=trained.get_vocab(), unk_token=UNK, continuing_subword_prefix="##"))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    _add_template(tok)
    return tok


def _bare(model):
    """A tokenizer with BERT's lowercasing normalizer, pre-tokenizer and WordPiece decoder around `model`."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers

    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _add_template(tok) -> None:
    from tokenizers import processors

    cls, sep = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls), (SEP, sep)],
    )


class WordPieceTokenizer:
    """Fixed-length BERT encodings from a `tokenizers.Tokenizer`, with the special ids at hand."""

    def __init__(self, tokenizer):
        # the five special tokens must be there; deepgen's own vocabularies hold them at 0-4, a Hugging Face
        # BERT's elsewhere ([UNK] 100, [CLS] 101, ...). [PAD] must be 0: rows are padded with zeros.
        for token in SPECIAL_TOKENS:
            if tokenizer.token_to_id(token) is None:
                raise DataError(f"tokenizer: no {token} token (BERT needs {', '.join(SPECIAL_TOKENS)})")
        if tokenizer.token_to_id(PAD) != 0:
            raise DataError(f"tokenizer: {PAD} has id {tokenizer.token_to_id(PAD)}, expected 0 (rows are padded "
                            "with id 0)")
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (tokenizer.token_to_id(t)
                                                                            for t in SPECIAL_TOKENS)

    # --- building, saving, loading -----------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2,
              length: int | None = None) -> WordPieceTokenizer:
        return cls(train_wordpiece(texts, vocab_size, min_frequency, length))

    @classmethod
    def load(cls, path: str | Path) -> WordPieceTokenizer:
        """Read a `tokenizer.json` (or a folder holding one)."""
        from tokenizers import Tokenizer

        path = Path(path).expanduser()
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise DataError(f"{path}: no such tokenizer file")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise DataError(f"{path}: not a tokenizers JSON file: {first_line(e)}") from None

    def to_json(self) -> str:
        return self._tok.to_str()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    # --- vocabulary ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> dict[str, int]:
        return {token: self._tok.token_to_id(token) for token in SPECIAL_TOKENS}

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self._tok.id_to_token(int(index))

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of `text` without special tokens, e.g. ['un', '##believ', '##able']."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # --- encoding -----------------------------------------------------------------------------------

    def encode(self, text: str, max_len: int) -> Encoded:
        """`[CLS] text [SEP]` as one row: arrays of shape (max_len,), length a 0-d array."""
        return self.encode_batch([text], max_len)[0]

    def encode_pair(self, a: str, b: str, max_len: int) -> Encoded:
        """`[CLS] a [SEP] b [SEP]` as one row, truncated longest-first to max_len."""
        return self.encode_pair_batch([a], [b], max_len)[0]

    def encode_batch(self, texts: Sequence[str], max_len: int) -> Encoded:
        """(N, max_len) rows of `[CLS] text [SEP]`, each truncated (keeping [SEP]) and padded."""
        pieces = self.pieces(texts)
        return self.assemble(pieces, np.arange(len(pieces)), None, max_len)

    def encode_pair_batch(self, a: Sequence[str], b: Sequence[str], max_len: int) -> Encoded:
        """(N, max_len) rows of `[CLS] a [SEP] b [SEP]`, segment 1 from b on, truncated longest-first."""
        if len(a) != len(b):
            raise ValueError(f"encode_pair_batch: {len(a)} first sentences but {len(b)} second ones")
        pieces = self.pieces(list(a) + list(b))
        return self.assemble(pieces, np.arange(len(a)), np.arange(len(a), 2 * len(a)), max_len)

    def pieces(self, texts: Sequence[str]) -> Pieces:
        """Word-piece ids of each text, without special tokens, as one ragged array.

        Sentence pairs reuse these: each sentence is tokenized once however many pairs it is in.
        """
        texts = list(texts)
        lengths, flat = [np.zeros(0, np.int64)], [np.zeros(0, np.int32)]
        for lo in range(0, len(texts), _ENCODE_CHUNK):  # bounds the Encoding objects alive at once
            encodings = self._tok.encode_batch(texts[lo:lo + _ENCODE_CHUNK], add_special_tokens=False)
            lengths.append(np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings)))
            flat.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int32, int(lengths[-1].sum())))
        return Pieces(np.concatenate(flat), np.concatenate([[0], np.cumsum(np.concatenate(lengths))]))

    def assemble(self, pieces: Pieces, a: np.ndarray, b: np.ndarray | None, max_len: int) -> Encoded:
        """Rows `[CLS] A [SEP]` (b None) or `[CLS] A [SEP] B [SEP]` from texts a[i], b[i] of `pieces`.

        This is what the saved TemplateProcessing does, vectorised over the batch.
        """
        pair = b is not None
        _check_max_len(max_len, 3 if pair else 2)
        a = np.asarray(a, np.int64)
        b = np.asarray(b if pair else np.zeros_like(a), np.int64)
        budget = max_len - (3 if pair else 2)
        len_a, len_b = pieces.lengths[a], (pieces.lengths[b] if pair else np.zeros(len(a), np.int64))
        ta, tb = truncate_longest_first(len_a, len_b, budget)
        out = Encoded(np.zeros((len(a), max_len), np.int32), np.zeros((len(a), max_len), np.int8),
                      (ta + tb + (3 if pair else 2)).astype(np.int32))
        for lo in range(0, len(a), _CHUNK):  # bounds the (rows, max_len) index grids below
            rows = slice(lo, lo + _CHUNK)
            _fill_rows(out[rows], pieces, a[rows], b[rows], ta[rows, None], tb[rows, None], pair,
                       self.cls_id, self.sep_id)
        return out


def _fill_rows(out: Encoded, pieces: Pieces, a, b, ta, tb, pair: bool, cls_id: int, sep_id: int) -> None:
    """Write rows in place; ta, tb (n, 1) are the kept lengths of A and B."""
    j = np.arange(out.input_ids.shape[1])[None, :]  # (1, L) position in the row
    in_a = (j >= 1) & (j <= ta)  # (n, L): A sits at 1 .. ta
    in_b = (j >= ta + 2) & (j <= ta + tb + 1) & pair  # B at ta+2 .. ta+tb+1, after A's [SEP]
    source = np.where(in_a, pieces.offsets[a][:, None] + j - 1, pieces.offsets[b][:, None] + j - ta - 2)
    take = in_a | in_b
    out.input_ids[take] = pieces.flat[source[take]]
    out.input_ids[:, 0] = cls_id
    out.input_ids[(j == ta + 1) | ((j == ta + tb + 2) & pair)] = sep_id
    if pair:
        out.segment_ids[(j >= ta + 2) & (j <= ta + tb + 2)] = 1  # B and its [SEP]


@dataclass(frozen=True)
class Pieces:
    """Word-piece ids of many texts: text i is flat[offsets[i]:offsets[i + 1]]."""

    flat: np.ndarray  # (T,) int32
    offsets: np.ndarray  # (N + 1,) int64

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def truncate_longest_first(len_a: np.ndarray, len_b: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of A and B cut to fit `budget` tokens together, as `tokenizers`' longest_first does.

    The shorter side (A on ties) is kept whole if it fits in floor(budget / 2), else cut to that; the longer
    side gets the rest.
    """
    fits = len_a + len_b <= budget
    a_shorter = len_a <= len_b
    short = np.minimum(np.where(a_shorter, len_a, len_b), budget // 2)
    long = budget - short
    ta = np.where(fits, len_a, np.where(a_shorter, short, long))
    tb = np.where(fits, len_b, np.where(a_shorter, long, short))
    return ta, tb


def _check_max_len(max_len: int, specials: int) -> None:
    if max_len <= specials:
        raise DataError(f"max_len {max_len} leaves no room for text beside {specials} special tokens")
