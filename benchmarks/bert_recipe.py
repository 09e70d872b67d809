"""A BERT pretraining recipe's learning curve: per-epoch validation MLM / NSP accuracy beside what guessing gets.

    python benchmarks/bert_recipe.py [--spec pipelines/bert_pretrain.yaml] [--set train.epochs=1 ...]
                                     [--corpus corpora/wordnet.txt] [--out DIR]

Runs the recipe as `deepgen run` trains it (`deepgen.train.loop.train_loop`, the loop Ray Train runs) in
one process without Ray (`LocalEnv`), so the curve is the pipeline's. Prints one line per epoch (validation
MLM and NSP accuracy and loss, wall and CPU seconds so far, updates so far), then the test split's figures
beside the two guesses: the training split's most frequent token for MLM and the majority class for NSP,
and the NSP accuracy of a word-overlap rule (`nsp_overlap_accuracy`: what lexical cues alone give).
Every epoch's checkpoint (weights, bert-config.json, tokenizer.json) stays in DIR/checkpoints, so
`benchmarks/text.py --pretrained` can fine-tune from it.

CPU seconds (process time) are reported beside wall seconds: on a shared machine the wall clock measures the
neighbours; the CPU seconds of a run with torch at one thread are close to its wall time on an idle core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepgen.config import PipelineSpec, apply_override, load_yaml  # noqa: E402
from deepgen.data.prepare import prepare_dataset  # noqa: E402
from deepgen.tasks import build_task  # noqa: E402
from deepgen.train.env import LocalEnv  # noqa: E402
from deepgen.train.loop import load_model_weights, train_loop  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(ROOT / "pipelines" / "bert_pretrain.yaml"))
    p.add_argument("--corpus", action="append", help="text file or folder (replaces data.source.paths; repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a spec field")
    p.add_argument("--out", default="bench-bert-recipe", help="working folder: prepared data, checkpoints")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--curve-every", type=int, default=250,
                   help="also score the first 4,000 validation pairs every this many updates (0: per epoch only)")
    return p.parse_args(argv)


def recipe_spec(args) -> PipelineSpec:
    raw = load_yaml(Path(args.spec).read_text())
    if args.corpus:
        raw["data"]["source"]["paths"] = args.corpus
    for item in args.set:
        apply_override(raw, item)
    out = Path(args.out).resolve()
    raw["data"]["output"] = str(out / "data")
    raw.setdefault("tracking", {})["runs_dir"] = str(out / "runs")
    return PipelineSpec.validate_dict(raw, args.spec)


def watch_updates(spec: PipelineSpec, every: int, wall0: float, cpu0: float) -> None:
    """Score a fixed validation subset every `every` training steps, inside the epoch: a run of one or two
    epochs has a curve too. It wraps the task's train_step (the loop builds the task itself); the scoring is
    `BertPretrainTask.eval_step`, the loop's own validation, with its fixed masking."""
    from deepgen.tasks.bert import BertPretrainTask, batches_of, read_split

    val = {k: v[:4000] for k, v in read_split(spec.data_dir, "val", BertPretrainTask.batch_columns).items()}
    step = BertPretrainTask.train_step
    count = [0]

    def train_step(self, models, optimizers, batch):
        out = step(self, models, optimizers, batch)
        count[0] += 1
        if count[0] % every == 0:
            model = models["model"]
            model.eval()
            sums: dict[str, float] = {}
            with torch.no_grad():
                for b in batches_of(val):
                    for k, v in self.eval_step(models, b).items():
                        sums[k] = sums.get(k, 0.0) + float(v)
            model.train()
            print(json.dumps({"update": count[0], "wall_s": round(time.time() - wall0),
                              "cpu_s": round(time.process_time() - cpu0),
                              "val_mlm_accuracy": round(sums["mlm_correct"] / sums["mlm_count"], 4),
                              "val_nsp_accuracy": round(sums["nsp_accuracy"] / len(val["length"]), 4),
                              "val_mlm_loss": round(sums["mlm_loss_sum"] / sums["mlm_count"], 4)}), flush=True)
        return out

    BertPretrainTask.train_step = train_step


def nsp_overlap_accuracy(data: dict[str, torch.Tensor], train_ids: torch.Tensor, skip_top: int = 50) -> float:
    """NSP accuracy of a rule with no training: "B follows A" when A and B share a token outside the
    `skip_top` most frequent tokens of `train_ids` (and the five special ids 0-4, deepgen's [PAD] [UNK]
    [CLS] [SEP] [MASK]). How far lexical overlap alone goes: a model below it has not learned to compare
    the two segments yet. data: input_ids, segment_ids (P, T), length (P,), is_next (P,)."""
    ids, seg = data["input_ids"].long(), data["segment_ids"].long()
    vocab = int(max(ids.max(), train_ids.max())) + 1
    skip = torch.zeros(vocab, dtype=torch.bool)
    skip[torch.bincount(train_ids.long().reshape(-1), minlength=vocab).argsort(descending=True)[:skip_top]] = True
    skip[:5] = True
    real = (torch.arange(ids.shape[1])[None, :] < data["length"][:, None]) & ~skip[ids]  # (P, T)
    rows = torch.arange(len(ids))[:, None].expand_as(ids)
    in_a = torch.zeros(len(ids), vocab, dtype=torch.bool)
    in_b = torch.zeros(len(ids), vocab, dtype=torch.bool)
    in_a[rows[real & (seg == 0)], ids[real & (seg == 0)]] = True  # (P, V) tokens of sentence A
    in_b[rows[real & (seg == 1)], ids[real & (seg == 1)]] = True
    guess = (in_a & in_b).any(1)
    return float((guess == data["is_next"].bool()).float().mean())


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = recipe_spec(args)
    out = Path(args.out).resolve()
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=print)
    print(json.dumps({"rows": manifest.rows, "documents": manifest.documents, "vocab": manifest.vocab_size,
                      "truncated": manifest.truncated, "model": spec.model.model_dump(), "train": {
                          k: v for k, v in spec.train.model_dump().items() if k in (
                              "epochs", "batch_size", "lr", "warmup_fraction", "lr_decay", "weight_decay")}}))
    env = LocalEnv(spec.data_dir, spec.anomaly, out / "checkpoints", seed=spec.train.seed,
                   keep=spec.train.epochs)  # every epoch's encoder: fine-tune from any point of the curve
    wall0, cpu0 = time.time(), time.process_time()
    updates_per_epoch = manifest.rows["train"] // spec.train.batch_size

    def on_epoch(m: dict) -> None:
        print(json.dumps({"epoch": m["epoch"], "updates": m["epoch"] * updates_per_epoch,
                          "wall_s": round(time.time() - wall0), "cpu_s": round(time.process_time() - cpu0),
                          **{k: round(m[k], 4) for k in ("val_mlm_accuracy", "val_nsp_accuracy", "val_mlm_loss",
                                                         "val_nsp_loss", "train_mlm_accuracy",
                                                         "train_nsp_accuracy", "tokens_per_s") if k in m}}),
              flush=True)

    if args.curve_every:
        watch_updates(spec, args.curve_every, wall0, cpu0)
    train_loop(spec, manifest, env, on_epoch=on_epoch)
    task = build_task(spec, manifest)
    checkpoint = env.latest_checkpoint()
    evaluation = task.evaluate(load_model_weights(checkpoint, task), spec.data_dir)
    from deepgen.tasks.bert import read_split

    train_ids = read_split(spec.data_dir, "train", ("input_ids", "length"))
    train_real = train_ids["input_ids"][torch.arange(train_ids["input_ids"].shape[1])[None, :]
                                        < train_ids["length"][:, None]]
    test = read_split(spec.data_dir, "test", ("input_ids", "segment_ids", "length", "is_next"))
    print(json.dumps({"test": {k: round(v, 4) for k, v in evaluation.metrics.items()},
                      "test_nsp_accuracy_word_overlap": round(nsp_overlap_accuracy(test, train_real), 4),
                      "checkpoint": str(checkpoint), "wall_s": round(time.time() - wall0),
                      "cpu_s": round(time.process_time() - cpu0)}), flush=True)


if __name__ == "__main__":
    main()
