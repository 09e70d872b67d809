"""Retrieval on WordNet: each synset's example sentence is a query, its gloss the document to find among
all of WordNet's glosses. deepgen's encoder (mean-pooled and [CLS]) beside TF-IDF cosine and BM25, and
beside the same encoder at random initialisation (what pretraining adds), on the same queries.

    .venv/bin/python benchmarks/retrieval.py --model bert-wordnet@champion      # a registered model
    .venv/bin/python benchmarks/retrieval.py --model path/to/exported/model      # an exported folder
    .venv/bin/python benchmarks/retrieval.py --model bert-wordnet/1 bert-wordnet/2 bert-wordnet/3  # per seed

Documents: the distinct glosses of all synsets (`--documents definition`, the default: the definition
alone) or, as `deepgen corpus wordnet` writes them, "lemma, lemma: definition" (`--documents lemmas`).
Queries: the first quoted example of every synset that has one. They are split in two halves per seed:
`val` picks the pooling, `test` gives the figures. A query is a hit at k when its own gloss is among the
k best documents; ties (common for the lexical baselines: a query sharing no word with any gloss scores
0 everywhere) count as the expected hit rate under a random order of the tied documents.
Recall@1 and @10, mean (std) over the seeds. The machine is named with the figures in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from deepgen.data.corpora import WORDNET_FILES, find_wordnet, parse_wordnet_line
from deepgen.retrieval import POOLINGS, TextEmbedder

KS = (1, 10)


def read_queries_and_glosses(wordnet_dir: str | None, documents: str) -> tuple[list[str], list[str], np.ndarray]:
    """(distinct glosses, queries, gold (Q,) index of each query's gloss)."""
    folder = find_wordnet(wordnet_dir)
    glosses, queries, gold, seen = [], [], [], {}
    for name, pos in zip(WORDNET_FILES, "nvar"):
        with open(folder / f"data.{name}", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                synset = parse_wordnet_line(line, pos)
                if synset is None or not synset.definition:
                    continue
                doc = synset.definition if documents == "definition" else \
                    f"{', '.join(synset.lemmas[:3])}: {synset.definition}"
                i = seen.setdefault(doc, len(glosses))
                if i == len(glosses):
                    glosses.append(doc)
                examples = re.findall(r'"([^"]+)"', line.split("|", 1)[1])
                if examples and examples[0].strip():
                    queries.append(examples[0].strip())
                    gold.append(i)
    return glosses, queries, np.array(gold, np.int64)


def hit_rates(scores: np.ndarray, gold: np.ndarray, ks=KS) -> np.ndarray:
    """scores (b, N), gold (b,) -> (b, len(ks)) expected hit at each k, ties broken at random."""
    g = scores[np.arange(len(gold)), gold][:, None]  # (b, 1)
    above = (scores > g).sum(1)  # (b,)
    tied = (scores == g).sum(1)  # (b,) the gold document included
    return np.stack([np.clip((k - above) / tied, 0, 1) for k in ks], 1)


def dense_hits(queries: np.ndarray, docs: np.ndarray, gold: np.ndarray, block: int = 512) -> np.ndarray:
    return np.concatenate([hit_rates(queries[i:i + block] @ docs.T, gold[i:i + block])
                           for i in range(0, len(queries), block)])


def sparse_hits(queries, docs, gold: np.ndarray, block: int = 256) -> np.ndarray:
    """queries (Q, V), docs (N, V) scipy sparse: score = queries @ docs^T."""
    docs_t = docs.T.tocsc()
    return np.concatenate([hit_rates((queries[i:i + block] @ docs_t).toarray(), gold[i:i + block])
                           for i in range(0, queries.shape[0], block)])


def tfidf_hits(glosses: list[str], queries: list[str], gold: np.ndarray) -> np.ndarray:
    """Cosine of TF-IDF vectors (sublinear tf, English stop words), fitted on the glosses."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True, stop_words="english")
    docs = vec.fit_transform(glosses)
    return sparse_hits(vec.transform(queries), docs, gold)


def bm25_hits(glosses: list[str], queries: list[str], gold: np.ndarray, k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """Okapi BM25 (Robertson and Zaragoza 2009): score(q, d) = sum over terms t of q of
    idf(t) * tf(t, d) (k1 + 1) / (tf(t, d) + k1 (1 - b + b |d| / avgdl)),  idf = ln(1 + (N - df + 0.5) / (df + 0.5))."""
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(stop_words="english")
    tf = vec.fit_transform(glosses).tocsr().astype(np.float64)  # (N, V)
    n = tf.shape[0]
    df = np.bincount(tf.indices, minlength=tf.shape[1])
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    length = np.asarray(tf.sum(1)).ravel()
    norm = k1 * (1 - b + b * length / length.mean())  # (N,)
    w = tf.copy()
    w.data = w.data * (k1 + 1) / (w.data + np.repeat(norm, np.diff(w.indptr)))
    w = w @ sparse.diags(idf)
    q = vec.transform(queries)
    q.data[:] = 1  # each query term once
    return sparse_hits(q.tocsr().astype(np.float64), w.tocsr(), gold)


def load_embedder(ref: str, runs_dir: str, pooling: str) -> TextEmbedder:
    """A registered model (NAME@ALIAS, NAME/VERSION) or an exported folder."""
    if Path(ref).is_dir():
        return TextEmbedder.load(ref, pooling)
    from deepgen import tracking

    tracking.configure(runs_dir)
    version = tracking.resolve(ref)
    with tracking.fetched_model_dir(version) as folder:
        return TextEmbedder.load(folder, pooling, where=ref)


@torch.no_grad()
def embed_pooled(embedder: TextEmbedder, texts: list[str], batch_size: int = 256) -> dict[str, np.ndarray]:
    """Every pooling's (N, C) unit vectors from one pass of the encoder (as TextEmbedder.embed, per pooling)."""
    enc = embedder.tokenizer.encode_batch(list(texts), embedder.max_len)
    out = {pooling: np.zeros((len(enc), embedder.dim), np.float32) for pooling in POOLINGS}
    order = np.argsort(enc.length, kind="stable")
    for lo in range(0, len(order), batch_size):
        rows = order[lo:lo + batch_size]
        width = int(enc.length[rows].max())
        ids = torch.from_numpy(enc.input_ids[rows, :width].astype(np.int64))
        mask = torch.from_numpy(enc.attention_mask[rows, :width]).bool()
        h, pooled = embedder.bert(ids, None, None if bool(mask.all()) else mask)
        m = mask[..., None].float()
        vectors = {"mean": (h * m).sum(1) / m.sum(1), "cls": pooled}
        for pooling, v in vectors.items():
            out[pooling][rows] = torch.nn.functional.normalize(v.float(), dim=-1).numpy()
    return out


def centred(docs: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = docs.mean(0)
    return tuple(v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12) for v in (docs - mu, queries - mu))


def encoder_hits(embedder: TextEmbedder, glosses, queries, gold, cache: Path) -> dict[str, np.ndarray]:
    """variant (pooling, and pooling + centring) -> (Q, len(KS)) expected hits; kept in `cache` (a model
    version's weights never change)."""
    if cache.is_file():
        with np.load(cache) as saved:
            return dict(saved)
    docs, asked = embed_pooled(embedder, glosses), embed_pooled(embedder, queries)
    hits = {}
    for pooling in POOLINGS:
        hits[pooling] = dense_hits(asked[pooling], docs[pooling], gold)
        # centred: the documents' mean vector taken away from both sides (Mu and Viswanath 2018; Su et al.
        # 2021): the vectors of an encoder not trained for similarity share one large common direction
        d, q = centred(docs[pooling], asked[pooling])
        hits[f"{pooling}, centred"] = dense_hits(q, d, gold)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **hits)
    return hits


def random_like(embedder: TextEmbedder, seed: int) -> TextEmbedder:
    """The same architecture and tokenizer, at BERT's random initialisation."""
    from deepgen.models.bert import BertModel, init_bert_weights

    torch.manual_seed(seed)
    bert = BertModel(embedder.bert.config)
    bert.apply(lambda m: init_bert_weights(m, bert.config.init_std))
    return TextEmbedder(bert, embedder.tokenizer, embedder.max_len, embedder.pooling)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True,
                   help="NAME@ALIAS, NAME/VERSION or an exported folder of a bert_pretrain or bert_classifier "
                        "model; several (e.g. one per pretraining seed): seed i uses model i")
    p.add_argument("--runs-dir", default="deepgen-runs")
    p.add_argument("--wordnet", help="WordNet dict folder (default: the installed wordnet-base)")
    p.add_argument("--documents", choices=("definition", "lemmas"), default="definition")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--limit-queries", type=int, help="a seeded sample of this many queries (faster)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--random-inits", type=int, default=1,
                   help="encoders at random initialisation (the control), one per model up to this many")
    p.add_argument("--out", default="benchmarks/out/retrieval.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    glosses, queries, gold = read_queries_and_glosses(args.wordnet, args.documents)
    if args.limit_queries and args.limit_queries < len(queries):
        keep = np.sort(np.random.default_rng(0).choice(len(queries), args.limit_queries, replace=False))
        queries, gold = [queries[i] for i in keep], gold[keep]
    print(f"{len(glosses)} distinct glosses ({args.documents}), {len(queries)} queries")

    # method -> one (Q, len(KS)) array of expected hits per model (the lexical baselines: one for all)
    hits: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for name, run in (("TF-IDF cosine", lambda: tfidf_hits(glosses, queries, gold)),
                      ("BM25", lambda: bm25_hits(glosses, queries, gold))):
        t = time.perf_counter()
        hits[name], seconds[name] = [run()], time.perf_counter() - t
    cache = Path(args.out).parent / "retrieval-cache"
    limit = f"-q{len(queries)}"
    for m, ref in enumerate(args.model):
        trained = load_embedder(ref, args.runs_dir, "mean")
        slug = ref.replace("/", "-v").replace("@", "-at-").strip("-.")
        runs = [("pretrained", trained, f"{slug}-{args.documents}{limit}")]
        if m < args.random_inits:
            runs.append(("random init", random_like(trained, seed=m), f"random{m}-{args.documents}{limit}"))
        for label, embedder, key in runs:
            t = time.perf_counter()
            for pooling, h in encoder_hits(embedder, glosses, queries, gold, cache / f"{key}.npz").items():
                hits.setdefault(f"deepgen, {label}, {pooling}", []).append(h)
            seconds[f"deepgen, {label}"] = seconds.get(f"deepgen, {label}", 0.0) + time.perf_counter() - t
    for name, s in seconds.items():
        print(f"  {name}: {s:.0f} s")

    # seed i: model i (of those given), and its own halving of the queries: val chooses, test reports
    per_seed = {name: {"val": [], "test": []} for name in hits}
    for i, seed in enumerate(args.seeds):
        order = np.random.default_rng(seed).permutation(len(queries))
        halves = {"val": order[: len(order) // 2], "test": order[len(order) // 2:]}
        for name, per_model in hits.items():
            h = per_model[i % len(per_model)]
            for split, rows in halves.items():
                per_seed[name][split].append(h[rows].mean(0).tolist())
    variants = [name.removeprefix("deepgen, pretrained, ") for name in per_seed if "pretrained" in name]
    chosen = max(variants, key=lambda v: np.mean(per_seed[f"deepgen, pretrained, {v}"]["val"], 0)[1])
    print(f"\nchosen on val (recall@10): {chosen}")
    print("\n| method | val recall@1 | val recall@10 | test recall@1 | test recall@10 |\n|---|---:|---:|---:|---:|")
    for name, splits in per_seed.items():
        cells = []
        for split in ("val", "test"):
            r = np.array(splits[split])  # (seeds, len(KS))
            cells += [f"{m:.4f} ({s:.4f})" for m, s in zip(r.mean(0), r.std(0))]
        print(f"| {name} | {' | '.join(cells)} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"models": args.model, "documents": args.documents, "glosses": len(glosses),
                               "queries": len(queries), "seeds": args.seeds, "chosen_pooling": chosen,
                               "seconds": seconds, "recall": per_seed}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
