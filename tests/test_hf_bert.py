"""A local Hugging Face BERT folder as `model.pretrained`: a tiny checkpoint written here (config.json,
model.safetensors or pytorch_model.bin, vocab.txt), converted to deepgen's encoder and tokenizer, checked
against transformers where it is installed. Nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from deepgen import cli, hf_bert
from deepgen.errors import DataError

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "happy", "sad", "day", "run", "##s", "##ning", ".", "!", "was"]
VOCAB = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]  # HF order: specials apart
CONFIG = {"architectures": ["BertForPreTraining"], "model_type": "bert", "vocab_size": len(VOCAB), "hidden_size": 16,
          "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 24,
          "type_vocab_size": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
          "layer_norm_eps": 1e-12, "initializer_range": 0.02, "pad_token_id": 0}


def hf_state(seed: int = 0, old_names: bool = False) -> dict[str, torch.Tensor]:
    """Random weights under transformers' BertForPreTraining names (the tied MLM decoder left out, as
    save_pretrained leaves it); old_names: LayerNorm gamma/beta, as early checkpoints store them."""
    g = torch.Generator().manual_seed(seed)
    c, v, i = CONFIG["hidden_size"], CONFIG["vocab_size"], CONFIG["intermediate_size"]

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    def norm(prefix):
        w, b = ("gamma", "beta") if old_names else ("weight", "bias")
        return {f"{prefix}.{w}": 1 + t(c), f"{prefix}.{b}": t(c)}

    def dense(prefix, out, inp):
        return {f"{prefix}.weight": t(out, inp), f"{prefix}.bias": t(out)}

    s = {"bert.embeddings.word_embeddings.weight": t(v, c),
         "bert.embeddings.position_embeddings.weight": t(CONFIG["max_position_embeddings"], c),
         "bert.embeddings.token_type_embeddings.weight": t(2, c), **norm("bert.embeddings.LayerNorm")}
    for layer in range(CONFIG["num_hidden_layers"]):
        p = f"bert.encoder.layer.{layer}."
        for part in ("query", "key", "value"):
            s |= dense(p + f"attention.self.{part}", c, c)
        s |= dense(p + "attention.output.dense", c, c) | norm(p + "attention.output.LayerNorm")
        s |= dense(p + "intermediate.dense", i, c) | dense(p + "output.dense", c, i) | norm(p + "output.LayerNorm")
    s |= dense("bert.pooler.dense", c, c) | dense("cls.predictions.transform.dense", c, c)
    s |= norm("cls.predictions.transform.LayerNorm") | {"cls.predictions.bias": t(v)}
    return s | dense("cls.seq_relationship", 2, c)


def write_checkpoint(folder: Path, *, safetensors: bool = True, lower_case: bool = True, seed: int = 0,
                     old_names: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower_case}))
    state = hf_state(seed, old_names)
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_weights_land_on_deepgen_names_with_qkv_fused_in_order(tmp_path):
    state = hf_state()
    model = hf_bert.load_pretraining_model(write_checkpoint(tmp_path / "hf"))
    ours = model.state_dict()
    assert torch.equal(ours["bert.embeddings.word.weight"], state["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(ours["mlm.decoder_weight"], ours["bert.embeddings.word.weight"])  # tied
    p = "bert.encoder.layer.1.attention.self."
    assert torch.equal(ours["bert.encoder.layers.1.attention.qkv.weight"],
                       torch.cat([state[p + "query.weight"], state[p + "key.weight"], state[p + "value.weight"]]))
    assert torch.equal(ours["bert.encoder.layers.1.output_norm.bias"],
                       state["bert.encoder.layer.1.output.LayerNorm.bias"])
    assert torch.equal(ours["nsp.weight"], state["cls.seq_relationship.weight"])
    assert model.config.max_len == 24 and model.config.layers == 2 and model.config.vocab_size == len(VOCAB)

    # the same weights as an old pytorch_model.bin (gamma/beta) give the same model
    old = hf_bert.load_pretraining_model(write_checkpoint(tmp_path / "bin", safetensors=False, old_names=True))
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in ours.items())


def test_tokenizer_reads_vocab_txt_with_its_special_ids_and_lower_casing(tmp_path):
    tok = hf_bert.read_tokenizer(write_checkpoint(tmp_path / "lower"), len(VOCAB))
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 3, 4, 5, 6)
    assert tok.tokenize("The DOGS sat!") == ["the", "dog", "##s", "sat", "!"]
    row = tok.encode("The cat", 6)
    assert row.input_ids.tolist() == [4, VOCAB.index("the"), VOCAB.index("cat"), 5, 0, 0]
    cased = hf_bert.read_tokenizer(write_checkpoint(tmp_path / "cased", lower_case=False), len(VOCAB))
    assert cased.tokenize("The cat") == ["[UNK]", "cat"]


def test_logits_equal_transformers_on_the_same_folder(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = write_checkpoint(tmp_path / "hf")
    theirs = transformers.BertForPreTraining.from_pretrained(str(folder), attn_implementation="eager").eval()
    ours = hf_bert.load_pretraining_model(folder).eval()
    tok = hf_bert.read_tokenizer(folder, len(VOCAB))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(folder))  # reads do_lower_case as a user's would
    texts = ["The cat sat on the mat.", "a happy dog", "RUNNING dogs!"]
    enc = tok.encode_pair_batch(texts, ["the day was sad", "cats", "a mat"], 16)
    want = hf_tok(texts, ["the day was sad", "cats", "a mat"], padding="max_length", max_length=16)
    assert enc.input_ids.tolist() == want["input_ids"] and enc.segment_ids.tolist() == want["token_type_ids"]

    ids, seg = torch.tensor(enc.input_ids, dtype=torch.long), torch.tensor(enc.segment_ids, dtype=torch.long)
    mask = torch.tensor(enc.attention_mask, dtype=torch.long)
    real = mask.bool()
    with torch.no_grad():
        out = ours(ids, seg, mask, mlm_labels=ids.masked_fill(~real, -100))  # MLM logits at every real token
        ref = theirs(input_ids=ids, token_type_ids=seg, attention_mask=mask)
    assert torch.allclose(out.mlm_logits, ref.prediction_logits[real], atol=1e-4)
    assert torch.allclose(out.nsp_logits, ref.seq_relationship_logits, atol=1e-5)


def _sentiment_pipeline(root: Path, folder: Path) -> list[str]:
    pd.DataFrame({"text": ["a happy day", "a sad day"] * 10, "label": ["pos", "neg"] * 10}).to_csv(
        root / "labelled.csv", index=False)
    pipelines = os.path.join(os.path.dirname(__file__), "..", "pipelines")
    return [f"{pipelines}/bert_sentiment.yaml", "--set", f"model.pretrained={folder}",
            "--set", f"data.source.path={root / 'labelled.csv'}", "--set", f"tracking.runs_dir={root / 'runs'}",
            "--set", "data.text.max_len=16"]  # the shipped 64 is more than the tiny encoder's 24 positions


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "vocab.txt"])
def test_a_folder_without_one_of_the_files_is_one_line_naming_it(tmp_path, capsys, missing):
    folder = write_checkpoint(tmp_path / "bert-tiny")
    (folder / missing).unlink()
    assert cli.main(["prepare", *_sentiment_pipeline(tmp_path, folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("deepgen: error:") and missing in err
    assert not (tmp_path / "runs" / "pretrained").exists() or not any((tmp_path / "runs" / "pretrained").iterdir())


def test_the_pipeline_reads_the_folder_as_its_pretrained_encoder(tmp_path):
    """resolve_inputs converts once into the runs folder; the tokenizer and row length come from it."""
    from deepgen.config import PipelineSpec
    from deepgen.orchestrate import resolve_inputs
    from deepgen.tasks.bert import pretrained_config, pretrained_state

    folder = write_checkpoint(tmp_path / "bert-tiny")
    args = _sentiment_pipeline(tmp_path, folder)
    spec = resolve_inputs(PipelineSpec.from_yaml(args[0], overrides=args[2::2]))
    local = Path(spec.model.pretrained)
    assert local.parent == tmp_path / "runs" / "pretrained" and local.name.startswith("hf-bert-tiny-")
    assert spec.data.text.max_len == 16 and Path(spec.data.text.tokenizer) == local / "tokenizer.json"
    assert pretrained_config(local)["hidden"] == 16
    assert torch.equal(pretrained_state(local)["bert.embeddings.word.weight"],
                       hf_state()["bert.embeddings.word_embeddings.weight"])
    mtime = (local / "weights.pt").stat().st_mtime_ns
    assert Path(resolve_inputs(PipelineSpec.from_yaml(args[0], overrides=args[2::2])).model.pretrained) == local
    assert (local / "weights.pt").stat().st_mtime_ns == mtime  # converted once


def test_a_checkpoint_that_is_not_bert_is_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "hf")
    (folder / "config.json").write_text(json.dumps({**CONFIG, "hidden_act": "gelu_new"}))
    with pytest.raises(DataError, match="hidden_act 'gelu_new'"):
        hf_bert.read_config(folder)
    (folder / "config.json").write_text(json.dumps({**CONFIG, "hidden_size": 8}))
    with pytest.raises(DataError, match="does not match config.json"):
        hf_bert.load_pretraining_model(folder)
