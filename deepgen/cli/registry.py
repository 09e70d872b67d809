"""The commands that use registered models (score, predict, embed, search, sample, upscale) and look the
registry up or move its champion alias (`deepgen models ...`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from deepgen import console
from deepgen.cli.common import (
    add_force,
    add_json,
    add_model_ref,
    add_models_args,
    add_move_args,
    at_least,
)
from deepgen.errors import DataError, DeepgenError, first_line
from deepgen.files import check_output, writing_output


def add_use_commands(sub: argparse._SubParsersAction) -> None:
    """score, predict, embed, search, sample, upscale."""
    registry_io_commands = [
        (cmd_score, "score", "score a file with a registered model and its threshold",
         "Load a model and its threshold through the registry and write per-row score and is_anomaly to "
         "Parquet.", ".npy, .csv, .parquet or IDX images file of raw rows",
         "Parquet file to write (row, score, is_anomaly[, label])"),
    ]
    for func, name, help_, description, input_help, output_help in registry_io_commands:
        p = sub.add_parser(name, help=help_, description=description)
        add_model_ref(p)
        p.add_argument("--input", required=True, help=input_help)
        p.add_argument("--output", required=True, help=output_help)
        add_force(p)
        add_json(p)
        p.set_defaults(func=func)

    p = sub.add_parser("predict", help="masks for images, or labels for images or texts, with a registered model",
                       description="Segmentation models: one mask per input image, written to OUT.npy (N, H, W "
                                   "uint8), OUT.parquet or a folder of PNGs. Image classifiers: the label and its "
                                   "probability for each image of --input (printed, or --output OUT.parquet). "
                                   "Text classifiers: the label and its "
                                   "probability for each --text or each text of --input.")
    add_model_ref(p)
    p.add_argument("--input", help="images: .npy (N, H, W) / (N, C, H, W) or IDX; texts: .txt lines, .csv, .parquet")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--text-column", default="text", help="column of --input tables holding the text")
    p.add_argument("--output", help="masks.npy / masks.parquet / PNG folder; for labels an optional .parquet")
    p.add_argument("--json", action="store_true", help="labels: one JSON object per line")
    add_force(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("embed", help="texts -> vectors (Parquet) with a registered BERT encoder, for search",
                       description="Embed each --text or each text of --input with the encoder of a registered "
                                   "bert_pretrain or bert_classifier model: unit-length vectors (mean-pooled by "
                                   "default) with their texts, in a Parquet file that `deepgen search` reads.")
    add_model_ref(p)
    p.add_argument("--input", help="texts: .txt (one per line), .csv or .parquet (--text-column)")
    p.add_argument("--text", action="append", help="a text to embed (repeatable)")
    p.add_argument("--text-column", default="text", help="column of --input tables holding the text")
    p.add_argument("--output", required=True, help="Parquet file to write (row, text, vector)")
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean",
                   help="mean of the token vectors (default), or the pooled [CLS] output")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_force(p)
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("search", help="the texts of an index closest to a query (exact cosine)",
                       description="Embed each --query with the model that embedded the index and print the --k "
                                   "nearest texts of the index by cosine similarity (exact search).")
    add_model_ref(p)
    p.add_argument("--index", required=True, help="a Parquet file written by `deepgen embed`")
    p.add_argument("--query", action="append", help="a text to search for (repeatable)")
    p.add_argument("--input", help="queries: .txt (one per line), .csv or .parquet (--text-column)")
    p.add_argument("--text-column", default="text", help="column of --input tables holding the queries")
    p.add_argument("--k", type=at_least(1), default=10, help="texts to return per query (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("sample", help="a grid of images drawn from a registered GAN generator")
    add_model_ref(p)
    p.add_argument("--n", type=at_least(1, MAX_SAMPLES), default=64,
                   help=f"images in the grid (8 per row), at most {MAX_SAMPLES}")
    p.add_argument("--label", type=int, help="conditional GANs: the class to draw (default: every class in turn)")
    p.add_argument("--seed", type=at_least(0), default=0, help="noise seed: the same seed gives the same grid")
    p.add_argument("--out", required=True, help="PNG file to write")
    add_force(p)
    add_json(p)
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("upscale", help="super-resolve images with a registered SRGAN generator")
    add_model_ref(p)
    p.add_argument("--input", required=True, help="a folder of .png images, or a .npy (N, [C,] h, w)")
    p.add_argument("--output", required=True, help="a folder for the PNGs, or a .npy file")
    add_force(p)
    add_json(p)
    p.set_defaults(func=cmd_upscale)


def add_models_commands(sub: argparse._SubParsersAction) -> None:
    """models list | show | lookup | history | promote | rollback."""
    models = sub.add_parser("models", help="look models up in the registry").add_subparsers(
        dest="models_command", required=True)
    p = models.add_parser("list", help="registered models with their latest version and aliases")
    add_models_args(p)
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("show", help="one version: aliases, threshold, metrics, lineage tags")
    p.add_argument("ref", help="NAME@ALIAS, NAME/VERSION or NAME (latest)")
    add_models_args(p)
    p.set_defaults(func=cmd_models_show)
    p = models.add_parser("lookup", help="resolve an alias to NAME/VERSION and its models:/ URI, for scripts",
                          description="Print NAME/VERSION, a tab and models:/NAME/VERSION on one line, e.g. "
                                      "`deepgen models lookup NAME@champion | cut -f1` for a --model that stays "
                                      "on that version. Exits 1 if the reference is not in the registry.")
    p.add_argument("ref", help="NAME@ALIAS, NAME/VERSION or NAME (latest)")
    add_models_args(p)
    p.set_defaults(func=cmd_models_lookup)
    p = models.add_parser("history", help="which version held champion when, moved by whom and why",
                          description="Every recorded move of the champion alias, oldest first, with from/until "
                                      "(UTC), who moved it (gate, a person) and why.")
    p.add_argument("name", help="registered model name")
    add_models_args(p)
    p.set_defaults(func=cmd_models_history)
    p = models.add_parser("promote", help="move champion to a version, recording who and why",
                          description="Point the champion alias at VERSION and record it in the history.")
    p.add_argument("name", help="registered model name")
    p.add_argument("version", help="version number, e.g. 3")
    add_move_args(p)
    p.set_defaults(func=cmd_models_promote)
    p = models.add_parser("rollback", help="move champion back to the previous champion",
                          description="Point the champion alias back at the version that held it before the "
                                      "current one (a second rollback goes one further back).")
    p.add_argument("name", help="registered model name")
    add_move_args(p)
    p.set_defaults(func=cmd_models_rollback)


def cmd_score(args) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepgen import anomaly, tracking
    from deepgen.batch_scoring import is_large_input

    out = Path(args.output)
    sharded = is_large_input(args.input)  # beyond memory: Ray Data actors, a folder of Parquet files out
    check_output(out, Path(args.input), folder=sharded, force=args.force)
    tracking.configure(args.runs_dir)
    version = tracking.resolve(args.model)
    if "threshold" not in version.tags:
        raise DeepgenError(f"{args.model}: version {version.version} has no threshold tag; not an anomaly model")
    if sharded:
        return _score_sharded(args, version, out)
    scorer = tracking.load_registered(version, family="anomaly")
    threshold = float(version.tags["threshold"])  # the registry is the source of truth
    x, labels = scorer.read_input(args.input)
    scores = scorer.score(x)
    flagged = anomaly.flag(scores, threshold)
    columns = {"row": pa.array(np.arange(len(scores))), "score": pa.array(scores),
               "is_anomaly": pa.array(flagged)}
    if labels is not None:
        columns["label"] = pa.array(labels)
    with writing_output(out) as tmp:
        pq.write_table(pa.table(columns), tmp)
    return console.report(
        args, {"model": version.name, "version": str(version.version), "rows": len(scores), "threshold": threshold,
               "flagged": int(flagged.sum()), "output": str(out)},
        f"scored {len(scores)} rows with {version.name} v{version.version} (threshold {threshold:.6g}): "
        f"{int(flagged.sum())} flagged as anomalies -> {out}")


def _score_sharded(args, version, out: Path) -> int:
    """`deepgen score` of a folder or a large file: Ray Data map_batches, the model loaded once per actor."""
    from deepgen import orchestrate, tracking
    from deepgen.batch_scoring import score_with_ray_data
    from deepgen.export import read_meta

    with tracking.fetched_model_dir(version) as model_dir:
        if read_meta(model_dir).family != "anomaly":
            raise DeepgenError(f"{version.name}/{version.version}: a {read_meta(model_dir).family} model, not anomaly")
        orchestrate.ensure_ray()
        if out.is_dir():  # an empty folder (check_output refused a full one): the scores take its place
            out.rmdir()
        done = score_with_ray_data(Path(model_dir), args.input, out)
    threshold = float(version.tags["threshold"])
    return console.report(
        args, {"model": version.name, "version": str(version.version), "rows": done["rows"], "threshold": threshold,
               "flagged": done["flagged"], "output": str(out), "files": done["files"]},
        f"scored {done['rows']} rows with {version.name} v{version.version} (threshold {threshold:.6g}) "
        f"through Ray Data: {done['flagged']} flagged as anomalies -> {out}/ ({done['files']} Parquet files)")


def cmd_predict(args) -> int:
    """Labels or masks from a registered classifier or segmentation model: its family's predictor says how
    it reads its input and writes its answer (deepgen.serving.Predictor.predict_command)."""
    from deepgen import tracking

    tracking.configure(args.runs_dir)
    version = tracking.resolve(args.model)
    return tracking.load_registered(version).predict_command(args, version)


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
    from deepgen.retrieval import index_table
    from deepgen.tasks.bert import TextClassifier

    out = Path(args.output)
    if out.suffix != ".parquet":
        raise DeepgenError(f"{out}: vectors are written as Parquet; give --output FILE.parquet")
    check_output(out, *([Path(args.input)] if args.input else []), force=args.force)
    texts = list(args.text or [])
    if args.input:
        texts += TextClassifier.read_input(args.input, args.text_column)
    if not texts:
        raise DeepgenError(f"{args.input or args.model}: no texts to embed; give --input FILE (.txt lines, "
                           ".csv/.parquet) or --text \"...\"")
    embedder, model = _text_embedder(args)
    vectors = embedder.embed(texts)
    import pyarrow.parquet as pq

    with writing_output(out) as tmp:
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
        from deepgen.tasks.bert import TextClassifier

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
    check_output(out, force=args.force)
    sampler, version = _generator(args)
    try:
        grid = sampler.sample_grid(args.n, args.label, seed=args.seed)
    except ValueError as e:  # a label out of range, or one for an unconditional generator
        raise DeepgenError(f"{args.model}: {e}") from None
    with writing_output(out) as tmp:
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
    check_output(out, src, folder=out.suffix != ".npy", force=args.force)
    sampler, version = _generator(args)
    images, names = _read_images(src, sampler.meta.shape[0])
    if out.suffix == ".npy" and len({img.shape for img in images}) > 1:
        raise DataError(f"{src}: the images differ in size, so they cannot go into one .npy; give a folder "
                        "as --output")
    upscaled = [sampler.upscale(img[None])[0] for img in images]  # sizes may differ between files
    with writing_output(out) as tmp:
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
        until = "now" if r["current"] else console.when(r["until"])
        why = f"{r['action']}: {r['reason']}" if r["reason"] else r["action"]
        print(f"{'v' + r['version']:8} {console.when(r['from']):20} {until:20} {r['by']:12} {why}")
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


MAX_SAMPLES = 4096  # `sample --n`: a grid of 512 rows already; 10**9 would fill the memory before failing
