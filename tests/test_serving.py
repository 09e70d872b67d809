"""Every registered model serves: its MLflow pyfunc answers predict for each family, it is logged with a
signature, an input example and requirements pinned to the versions installed here, and a real
`mlflow models serve` of a quickstart-sized model answers over loopback what `deepgen score` writes.

The models are small and untrained (what is checked is the serving path, not their quality), registered once
per module in a real SQLite registry; no Ray.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version as installed
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from deepgen import orchestrate, tracking
from deepgen.anomaly import threshold_tags
from deepgen.cli import main
from deepgen.config import FprThreshold, PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.tasks import Evaluation, build_task

QUICKSTART = PipelineSpec.from_yaml(Path(__file__).resolve().parents[1] / "pipelines/quickstart.yaml")
TEXT = {"text": {"max_len": 12, "vocab_size": 60, "min_frequency": 1}}
BERT = {"hidden": 8, "layers": 1, "heads": 1, "intermediate": 8}
MODELS = {  # name: (source, model, gate metric, data extras)
    "anom": ({"kind": "digits"}, QUICKSTART.model.model_dump(), "roc_auc", {}),  # the quickstart's autoencoder
    "seg": ({"kind": "shapes", "num_images": 40, "size": 16}, {"kind": "unet", "base_channels": 4, "depth": 1},
            "dice", {}),
    "txt": ({"kind": "labelled_text", "path": "texts.csv"}, {"kind": "bert_classifier", **BERT}, "f1", TEXT),
    "enc": ({"kind": "text_files", "paths": ["corpus.txt"]}, {"kind": "bert_pretrain", **BERT}, "mlm_loss", TEXT),
    "gan": ({"kind": "digits"}, {"kind": "gan", "nz": 4, "hidden": [8]}, "frechet_distance", {}),
    "cgan": ({"kind": "digits"}, {"kind": "cgan", "nz": 4, "hidden": [8], "num_classes": 10}, "frechet_distance", {}),
    "sr": ({"kind": "digits"}, {"kind": "srgan", "scale": 2, "channels": 4, "num_blocks": 1, "ndf": 4,
                                "feature_width": 4}, "psnr", {"resize": 16}),
}


def _write_texts(root: Path) -> None:
    words = ["good", "bad", "day", "night", "cat", "dog"]
    pd.DataFrame({"text": [f"{w} day {i}" for i, w in enumerate(["good", "bad"] * 20)],
                  "label": ["pos", "neg"] * 20}).to_csv(root / "texts.csv", index=False)
    rng = np.random.default_rng(0)
    docs = ["\n".join(" ".join(rng.choice(words, 4)) + "." for _ in range(4)) for _ in range(30)]
    (root / "corpus.txt").write_text("\n\n".join(docs))


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """(tracking URI, root) of one SQLite registry holding version 1 of each model in MODELS, untrained."""
    root = tmp_path_factory.mktemp("serving")
    _write_texts(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = tracking.configure(root / "runs")
        for name, (source, model, metric, data) in MODELS.items():
            source = {k: (str(root / v) if k == "path" else [str(root / p) for p in v] if k == "paths" else v)
                      for k, v in source.items()}
            spec = orchestrate.resolve_inputs(PipelineSpec.validate_dict({
                "name": name, "data": {"source": source, **data}, "model": model,
                "registry": {"model_name": name, "gate_metric": metric}, "tracking": {"runs_dir": str(root / "runs")},
                **({"anomaly": QUICKSTART.anomaly.model_dump()} if name == "anom" else {})}))
            manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
            task = build_task(spec, manifest)
            tags = threshold_tags(0.5, FprThreshold()) if name == "anom" else {}
            ev = Evaluation({metric: 0.5}, registry_tags=tags)
            orchestrate.register(spec, manifest, ev, task.build_models(), task, orchestrate.start_run(spec, manifest))
    torch.set_num_threads(threads)
    return uri, root


def _pyfunc(registry, name):
    mlflow.set_tracking_uri(registry[0])
    return mlflow.pyfunc.load_model(f"models:/{name}/1")


def _example(registry, name):
    """The input example logged with the model, as the pyfunc receives it."""
    mlflow.set_tracking_uri(registry[0])
    info = mlflow.models.get_model_info(f"models:/{name}/1")
    assert info.signature is not None and info.saved_input_example_info is not None, name
    return info, mlflow.models.Model.load(f"models:/{name}/1").load_input_example()


@pytest.mark.parametrize("name", list(MODELS))
def test_every_family_is_logged_with_a_signature_an_example_and_pinned_requirements(registry, name):
    info, example = _example(registry, name)
    assert example is not None
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1"))
    pins = dict(line.split("==") for line in (folder / "requirements.txt").read_text().split() if "==" in line)
    for package in ("torch", "numpy", "pandas", "pyarrow", "mlflow", "tokenizers"):
        assert pins.get(package) == installed(package).split("+")[0], (package, pins)


def test_anomaly_detector_answers_scores_and_flags(registry):
    out = _pyfunc(registry, "anom").predict(np.random.default_rng(0).integers(0, 17, (5, 64)).astype(np.float64))
    assert list(out.columns) == ["score", "is_anomaly"] and len(out) == 5
    assert np.array_equal(out["is_anomaly"].to_numpy(), out["score"].to_numpy() > 0.5)


def test_segmentation_answers_masks(registry):
    raw = np.random.default_rng(0).integers(0, 256, (3, 16 * 16)).astype(np.float64)
    masks = _pyfunc(registry, "seg").predict(raw)
    assert masks.shape == (3, 16, 16) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}


def test_text_classifier_answers_labels_and_probabilities(registry):
    out = _pyfunc(registry, "txt").predict(pd.DataFrame({"text": ["good day", "bad night", "dog"]}))
    assert list(out.columns) == ["label", "probability"] and set(out["label"]) <= {"pos", "neg"}
    assert ((out["probability"] >= 0.5) & (out["probability"] <= 1)).all()


def test_pretrained_encoder_answers_one_embedding_per_text(registry):
    out = _pyfunc(registry, "enc").predict(pd.DataFrame({"text": ["good day", "a dog", "good day"]}))
    assert out.shape == (3, BERT["hidden"]) and np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[2], rtol=1e-6)  # the same text, the same embedding
    assert not np.allclose(out[0], out[1])


def test_gans_answer_one_image_per_seed_and_label(registry):
    from deepgen.tasks.gan import generate

    model = _pyfunc(registry, "gan")
    images = model.predict(pd.DataFrame({"seed": [3, 4, 3]}))
    assert images.shape == (3, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images[0], images[2])  # a seed draws the same image
    G = model.unwrap_python_model().predictor.generator
    np.testing.assert_allclose(images[1], generate(G, 1, seed=4).numpy()[0])  # what `deepgen sample` draws
    conditional = _pyfunc(registry, "cgan")
    drawn = conditional.predict(pd.DataFrame({"seed": [0, 0], "label": [1, 7]}))
    assert drawn.shape == (2, 1, 8, 8) and not np.allclose(drawn[0], drawn[1])  # the label changes the image
    with pytest.raises(Exception, match="label"):
        conditional.predict(pd.DataFrame({"seed": [0]}))


def test_srgan_answers_super_resolved_images_of_any_size(registry):
    model = _pyfunc(registry, "sr")
    for h, w in ((8, 8), (5, 7)):
        out = model.predict(np.random.default_rng(0).random((2, 1, h, w)))
        assert out.shape == (2, 1, 2 * h, 2 * w) and out.min() >= 0 and out.max() <= 1


# --- mlflow models serve -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture
def served(registry, tmp_path):
    """`mlflow models serve --env-manager local` of anom/1 on a free loopback port; stopped at the end."""
    uri, _ = registry
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    bin_dir = Path(sys.executable).parent  # mlflow starts uvicorn from PATH: the one beside this Python
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = bin_dir / "mlflow"
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", "models:/anom/1", "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its workers, started in their own session
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
        log.close()


def test_a_served_model_answers_over_http_what_deepgen_score_writes(registry, served, tmp_path, monkeypatch):
    uri, _ = registry
    rows = np.random.default_rng(1).integers(0, 17, (20, 8, 8)).astype(np.uint8)  # digits' raw grey levels
    np.save(tmp_path / "rows.npy", rows)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["score", "--model", "anom@champion", "--input", str(tmp_path / "rows.npy"),
                 "--output", str(tmp_path / "scores.parquet")]) == 0
    scored = pq.read_table(tmp_path / "scores.parquet").to_pydict()
    answer = _post(f"{served}/invocations", {"inputs": rows.reshape(20, -1).tolist()})["predictions"]
    assert len(answer) == 20
    np.testing.assert_allclose([r["score"] for r in answer], scored["score"], rtol=1e-9)
    assert [r["is_anomaly"] for r in answer] == scored["is_anomaly"]
