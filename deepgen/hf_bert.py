"""A local Hugging Face BERT checkpoint as the pretrained encoder of a fine-tuning pipeline, offline.

    FOLDER/config.json             sizes (hidden_size, num_hidden_layers, ...), positions, vocabulary size
    FOLDER/model.safetensors       the weights (or pytorch_model.bin, read with torch.load(weights_only=True))
    FOLDER/vocab.txt               the WordPiece vocabulary: line i is token id i
    FOLDER/tokenizer_config.json   optional: do_lower_case (default true), strip_accents, tokenize_chinese_chars

`convert_checkpoint` writes what `deepgen run` exports for a bert_pretrain model (weights.pt under deepgen's
parameter names, deepgen-model.json, tokenizer.json), so fine-tuning reads a Hugging Face encoder exactly as
it reads its own. The parameter names map one to one except self-attention, where deepgen keeps one fused
QKV projection: its (3C, C) weight is query, key and value stacked in that order. The MLM decoder is tied to
the token embeddings in both; a checkpoint without the pooler or the pretraining heads gets them at BERT's
random initialisation (fine-tuning trains the pooler anyway). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import torch

from deepgen.errors import DataError, first_line

CONFIG = "config.json"
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
VOCAB = "vocab.txt"
TOKENIZER_CONFIG = "tokenizer_config.json"
MARKERS = (CONFIG, *WEIGHTS_FILES, VOCAB)  # any of these, and no deepgen metadata: a Hugging Face folder
OPTIONAL_HEADS = ("bert.pooler.", "mlm.", "nsp.")  # left at random init when a checkpoint lacks them


def is_hf_checkpoint(folder: Path) -> bool:
    """A folder that looks like a Hugging Face model (and not like a deepgen export or checkpoint)."""
    from deepgen.export import META
    from deepgen.tasks.bert import BERT_CONFIG

    folder = Path(folder)
    if not folder.is_dir() or (folder / META).is_file() or (folder / BERT_CONFIG).is_file():
        return False
    return any((folder / name).is_file() for name in MARKERS)


def weights_file(folder: Path) -> Path:
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {WEIGHTS_FILES[0]} (or {WEIGHTS_FILES[1]}); a Hugging Face BERT folder needs "
                    f"{CONFIG}, {WEIGHTS_FILES[0]} and {VOCAB}")


def _required(folder: Path, name: str) -> Path:
    if not (folder / name).is_file():
        raise DataError(f"{folder / name}: missing; a Hugging Face BERT folder needs {CONFIG}, {WEIGHTS_FILES[0]} "
                        f"(or {WEIGHTS_FILES[1]}) and {VOCAB}")
    return folder / name


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not JSON ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def read_config(folder: Path):
    """config.json -> deepgen BertConfig, refusing what deepgen's encoder does not compute the same way."""
    from deepgen.models.bert import BertConfig

    path = _required(folder, CONFIG)
    c = _json(path)
    if c.get("model_type", "bert") != "bert":
        raise DataError(f"{path}: model_type {c['model_type']!r}; deepgen reads BERT checkpoints (model_type bert)")
    if c.get("hidden_act", "gelu") != "gelu":
        raise DataError(f"{path}: hidden_act {c['hidden_act']!r}; deepgen's encoder uses BERT's exact gelu")
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise DataError(f"{path}: position_embedding_type {c['position_embedding_type']!r}; only absolute "
                        "(learned) positions are supported")
    try:
        return BertConfig(
            vocab_size=int(c["vocab_size"]), hidden=int(c["hidden_size"]), layers=int(c["num_hidden_layers"]),
            heads=int(c["num_attention_heads"]), intermediate=int(c["intermediate_size"]),
            max_len=int(c.get("max_position_embeddings", 512)), type_vocab_size=int(c.get("type_vocab_size", 2)),
            dropout=float(c.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(c.get("attention_probs_dropout_prob", 0.1)), position="learned",
            pad_id=int(c.get("pad_token_id") or 0), layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)),
            init_std=float(c.get("initializer_range", 0.02)))
    except KeyError as e:
        raise DataError(f"{path}: no {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {first_line(e)}") from None


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    path = weights_file(folder)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise their own error types for damaged files
        raise DataError(f"{path}: cannot read the weights ({first_line(e)})") from None


def hf_to_deepgen_names(layers: int) -> dict[str, str]:
    """Hugging Face module prefix (without `bert.`) -> deepgen BertForPreTraining prefix; QKV apart."""
    names = {"embeddings.word_embeddings": "bert.embeddings.word",
             "embeddings.position_embeddings": "bert.embeddings.position",
             "embeddings.token_type_embeddings": "bert.embeddings.segment",
             "embeddings.LayerNorm": "bert.embeddings.norm", "pooler.dense": "bert.pooler",
             "cls.predictions.transform.dense": "mlm.transform", "cls.predictions.transform.LayerNorm": "mlm.norm",
             "cls.predictions.bias": "mlm.bias", "cls.seq_relationship": "nsp"}
    for i in range(layers):
        h, d = f"encoder.layer.{i}.", f"bert.encoder.layers.{i}."
        names |= {h + "attention.output.dense": d + "attention.proj",
                  h + "attention.output.LayerNorm": d + "attention_norm",
                  h + "intermediate.dense": d + "intermediate", h + "output.dense": d + "output",
                  h + "output.LayerNorm": d + "output_norm"}
    return names


def to_deepgen_state(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """A Hugging Face BERT state dict (BertModel, BertForPreTraining, BertForMaskedLM, ... names; the old
    LayerNorm gamma/beta too) -> deepgen BertForPreTraining names. Unknown keys are left out."""
    names = hf_to_deepgen_names(layers)
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    out = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        if key.endswith(".gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[: -len("beta")] + "bias"
        if ".attention.self." in key:  # encoder.layer.i.attention.self.{query,key,value}.{weight,bias}
            layer, rest = key.split(".attention.self.")
            part, kind = rest.split(".")
            qkv.setdefault((layer.replace("encoder.layer.", "bert.encoder.layers."), kind), {})[part] = value
            continue
        module, _, kind = key.rpartition(".")
        if key in names:  # a parameter that is its own module path (cls.predictions.bias)
            out[names[key]] = value
        elif module in names:
            out[f"{names[module]}.{kind}"] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"{layer}.attention.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def load_pretraining_model(folder: Path):
    """A deepgen BertForPreTraining holding the checkpoint's weights."""
    from deepgen.models.bert import BertForPreTraining

    config = read_config(folder)
    model = BertForPreTraining(config)  # BERT's random init, kept only for heads the checkpoint lacks
    state = to_deepgen_state(read_state(folder), config.layers)
    if "bert.embeddings.word.weight" in state:
        state["mlm.decoder_weight"] = state["bert.embeddings.word.weight"]  # tied, as in the checkpoint
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape that disagrees with config.json
        raise DataError(f"{weights_file(folder)}: does not match {CONFIG} ({first_line(e)[:300]})") from None
    missing = [k for k in missing if not k.startswith(OPTIONAL_HEADS)]
    if missing:
        raise DataError(f"{weights_file(folder)}: no weights for {missing[0]} ({len(missing)} encoder tensors "
                        "missing); is it a BERT checkpoint?")
    return model


def read_tokenizer(folder: Path, vocab_size: int):
    """vocab.txt + tokenizer_config.json -> deepgen's WordPieceTokenizer, as BertTokenizerFast builds it:
    BERT's normalizer (lower-casing per do_lower_case, accents stripped when lower-casing unless
    strip_accents says otherwise), BERT's pre-tokenizer, WordPiece with the `##` prefix."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    from deepgen.data.tokenizer import SPECIAL_TOKENS, UNK, WordPieceTokenizer, _add_template

    path = _required(folder, VOCAB)
    try:
        tokens = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if tokens and tokens[-1] == "":
        tokens.pop()
    vocab = {}
    for i, token in enumerate(t.rstrip("\r") for t in tokens):
        vocab.setdefault(token, i)
    if len(tokens) != vocab_size:
        raise DataError(f"{path}: {len(tokens)} tokens, but {CONFIG} says vocab_size {vocab_size}")
    settings = _json(folder / TOKENIZER_CONFIG) if (folder / TOKENIZER_CONFIG).is_file() else {}
    lowercase = bool(settings.get("do_lower_case", True))
    tok = Tokenizer(models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)),
        strip_accents=settings.get("strip_accents"), lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise DataError(f"{path}: no {missing[0]} token; BERT needs {', '.join(SPECIAL_TOKENS)}")
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # marks them special; their ids stay the vocabulary's
    _add_template(tok)
    return WordPieceTokenizer(tok)


def fingerprint(folder: Path) -> str:
    """Of the files a conversion reads: the same checkpoint is converted once."""
    digest = hashlib.sha256()
    files = [folder / CONFIG, weights_file(folder), folder / VOCAB, folder / TOKENIZER_CONFIG]
    for path in files:
        if not path.is_file():
            continue
        digest.update(path.name.encode() + path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def convert_checkpoint(folder: Path, dest: Path) -> Path:
    """Write `folder`'s checkpoint as a deepgen bert_pretrain export at `dest` (atomically: a hidden
    sibling renamed into place)."""
    from deepgen.data.manifest import Scaler
    from deepgen.data.tokenizer import TOKENIZER_FILE
    from deepgen.export import META, WEIGHTS, ModelMeta

    folder = Path(folder)
    for name in (CONFIG, VOCAB):
        _required(folder, name)
    weights_file(folder)
    model = load_pretraining_model(folder)
    tokenizer = read_tokenizer(folder, model.config.vocab_size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        torch.save(model.state_dict(), tmp / WEIGHTS)
        tokenizer.save(tmp / TOKENIZER_FILE)
        meta = ModelMeta(family="bert_encoder", kind="bert_pretrain", config=asdict(model.config),
                         shape=[model.config.max_len], scaler=Scaler(), feature_names=None,
                         extra={"special_ids": tokenizer.special_ids, "mask_rate": 0.15,
                                "max_len": model.config.max_len, "tokenizer_fingerprint": tokenizer.fingerprint,
                                "source": "huggingface"})
        (tmp / META).write_text(meta.model_dump_json(indent=2))
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
            # another process finished the same conversion first: its files are these
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def converted(folder: Path, cache: Path) -> Path:
    """The deepgen export of a Hugging Face folder, converted once into cache/hf-NAME-FINGERPRINT."""
    folder = Path(folder).absolute()
    for name in (CONFIG, VOCAB):
        _required(folder, name)
    dest = cache / f"hf-{folder.name}-{fingerprint(folder)[:12]}"
    if not dest.is_dir():
        convert_checkpoint(folder, dest)
    return dest
