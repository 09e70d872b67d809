"""BERT pretraining throughput: deepgen's BertForPreTraining against Hugging Face's, on the same batch.

    python benchmarks/bert_pretrain.py                       # bert-base shape on the GPU, batch 256 x 128
    python benchmarks/bert_pretrain.py --compile             # both models through torch.compile
    python benchmarks/bert_pretrain.py --device cpu --layers 2 --hidden 64 --heads 2 --batch 8 --seq 32 \
        --steps 3 --warmup 1                                 # smoke test

One process, no Ray: (1) a bf16 matmul ceiling on the device, (2) a parity check (HF loaded with deepgen's
weights gives the same logits, so both sides run the same model), (3) timed pretraining steps of each,
on one synthetic batch ([CLS] A [SEP] B [SEP], 15% dynamic masking, no padding). Both sides: fp32
weights, bf16 autocast, SDPA attention, fused AdamW, grad-norm clip 1.0. What differs is the model
code: deepgen fuses QKV and runs the MLM head on the masked positions only; HF has three QKV matmuls and
computes vocabulary logits for every position.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepgen.models.bert import BertConfig, BertForPreTraining, SpecialTokens, configure_optimizers, mask_tokens  # noqa: E402


class PretrainBatch(NamedTuple):
    input_ids: torch.Tensor  # (B, T) after masking
    segment_ids: torch.Tensor  # (B, T) 0 = sentence A, 1 = sentence B
    attention_mask: torch.Tensor | None  # None: no padding, so SDPA may use its flash kernel
    mlm_labels: torch.Tensor  # (B, T) original id at masked positions, -100 elsewhere
    nsp_labels: torch.Tensor  # (B,) 0 = IsNext, 1 = NotNext


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=None, help="feed-forward width (default 4 * hidden)")
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--mask-rate", type=float, default=0.15)
    p.add_argument("--steps", type=int, default=20, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, allocator, clocks)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--matmul-size", type=int, default=None, help="side of the square matmuls (8192 GPU, 512 CPU)")
    p.add_argument("--no-hf", action="store_true", help="time deepgen only")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are asynchronous: time what the GPU did, not the launches


def ceiling_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (its tensor cores' peak); fp32 on a CPU, where bf16 matmuls without AMX run at a few
    hundredths of the fp32 rate and would make every MFU look large."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def matmul_ceiling(device: torch.device, n: int, iters: int = 20) -> float:
    """FLOP/s of large square matmuls (2 n^3 FLOPs each) in `ceiling_dtype`: the peak the MFU figures are
    relative to."""
    a, b = (torch.randn(n, n, device=device, dtype=ceiling_dtype(device)) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t)


def make_batch(args: argparse.Namespace, special: SpecialTokens, device: torch.device) -> PretrainBatch:
    g = torch.Generator().manual_seed(args.seed)
    B, T = args.batch, args.seq
    first_word = max(special.ids) + 1
    ids = torch.randint(first_word, args.vocab, (B, T), generator=g)
    half = T // 2
    ids[:, 0], ids[:, half - 1], ids[:, -1] = special.cls, special.sep, special.sep
    segment_ids = (torch.arange(T) >= half).long().expand(B, T).contiguous()  # (B, T)
    masked, labels = mask_tokens(ids, special, args.vocab, args.mask_rate, generator=g)
    nsp = torch.randint(0, 2, (B,), generator=g)
    return PretrainBatch(masked.to(device), segment_ids.to(device), None, labels.to(device), nsp.to(device))


def pretrain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: PretrainBatch) -> torch.Tensor:
    """One step of deepgen's BertForPreTraining: minimise mlm_loss + nsp_loss."""
    with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16):
        out = model(batch.input_ids, batch.segment_ids, batch.attention_mask, batch.mlm_labels, batch.nsp_labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss.detach()


def hf_pretrain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: PretrainBatch) -> torch.Tensor:
    """The same step for transformers.BertForPreTraining (its loss: MLM mean over labelled positions + NSP)."""
    with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16):
        out = model(input_ids=batch.input_ids, token_type_ids=batch.segment_ids,
                    attention_mask=batch.attention_mask, labels=batch.mlm_labels,
                    next_sentence_label=batch.nsp_labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss.detach()


def build_hf(config: BertConfig, device: torch.device) -> torch.nn.Module | None:
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: skipping the Hugging Face comparison (pip install transformers)")
        return None
    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, intermediate_size=config.intermediate,
        max_position_embeddings=config.max_len, type_vocab_size=config.type_vocab_size,
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.attention_dropout,
        layer_norm_eps=config.layer_norm_eps, initializer_range=config.init_std, pad_token_id=config.pad_id,
        attn_implementation="sdpa")
    model = transformers.BertForPreTraining(hf_config).to(device)
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    return model


def to_hf_state(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """deepgen BertForPreTraining state dict -> transformers.BertForPreTraining names (QKV split in three)."""
    names = {"bert.embeddings.word.weight": "bert.embeddings.word_embeddings.weight",
             "bert.embeddings.position.weight": "bert.embeddings.position_embeddings.weight",
             "bert.embeddings.segment.weight": "bert.embeddings.token_type_embeddings.weight",
             "bert.embeddings.norm": "bert.embeddings.LayerNorm", "bert.pooler": "bert.pooler.dense",
             "mlm.transform": "cls.predictions.transform.dense", "mlm.norm": "cls.predictions.transform.LayerNorm",
             "mlm.bias": "cls.predictions.bias", "nsp": "cls.seq_relationship"}
    for i in range(layers):
        d, h = f"bert.encoder.layers.{i}.", f"bert.encoder.layer.{i}."
        names |= {d + "attention.proj": h + "attention.output.dense",
                  d + "attention_norm": h + "attention.output.LayerNorm",
                  d + "intermediate": h + "intermediate.dense", d + "output": h + "output.dense",
                  d + "output_norm": h + "output.LayerNorm"}
    out = {}
    for key, value in state.items():
        if ".attention.qkv." in key:  # (3C, ...) rows: query, key, value
            base, kind = key.split(".attention.qkv.")
            base = base.replace("encoder.layers.", "encoder.layer.")
            for part, chunk in zip(("query", "key", "value"), value.chunk(3)):
                out[f"{base}.attention.self.{part}.{kind}"] = chunk
            continue
        prefix = next((p for p in sorted(names, key=len, reverse=True) if key == p or key.startswith(p + ".")), None)
        if prefix is not None:
            out[names[prefix] + key[len(prefix):]] = value
    return out


def parity(ours: BertForPreTraining, hf: torch.nn.Module, batch: PretrainBatch, rows: int = 8) -> float:
    """Max |logit difference| (MLM at masked positions, NSP) with HF holding deepgen's weights, fp32, eval."""
    missing, unexpected = hf.load_state_dict(to_hf_state(ours.state_dict(), ours.config.layers), strict=False)
    missing = [k for k in missing if not k.endswith(("decoder.weight", "decoder.bias"))]  # tied in HF
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    ours.eval(), hf.eval()
    b = PretrainBatch(*(t[:rows] if t is not None else None for t in batch))
    with torch.no_grad():
        mine = ours(b.input_ids, b.segment_ids, b.attention_mask, b.mlm_labels, b.nsp_labels)
        theirs = hf(input_ids=b.input_ids, token_type_ids=b.segment_ids)
    ours.train(), hf.train()
    mlm = (mine.mlm_logits - theirs.prediction_logits[b.mlm_labels != -100]).abs().max()
    nsp = (mine.nsp_logits - theirs.seq_relationship_logits).abs().max()
    return max(mlm.item(), nsp.item())


def time_steps(step: Callable[[], torch.Tensor], args: argparse.Namespace,
               device: torch.device) -> tuple[float, float, float | None]:
    """(seconds per step, loss of the first step, peak GiB of GPU memory or None)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = step().item()  # also the first warm-up step (and the compile, with --compile)
    for _ in range(max(args.warmup - 1, 0)):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - t) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, first, peak


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True  # for anything left in fp32 outside autocast, both sides
    config = BertConfig(vocab_size=args.vocab, hidden=args.hidden, layers=args.layers, heads=args.heads,
                        intermediate=args.intermediate or 4 * args.hidden, max_len=max(512, args.seq))
    special = SpecialTokens() if args.vocab > 1000 else SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4)
    n = args.matmul_size or (8192 if device.type == "cuda" else 512)
    peak = matmul_ceiling(device, n)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}; {str(ceiling_dtype(device)).removeprefix('torch.')} matmul "
          f"ceiling ({n}^3): {peak / 1e12:.3g} TFLOP/s")

    batch = make_batch(args, special, device)
    ours = BertForPreTraining(config).to(device)
    # model FLOPs per token (BertForPreTraining.estimate_flops_per_token):
    #   6 * N_layers + 12 * L * C * T + 6 * mask_rate * (C^2 + C * V)
    # i.e. 6 FLOPs per weight per token (forward + backward) for the encoder, attention's QK^T and AV,
    # and the MLM head on the masked tokens only. The same count serves HF: it is the work the objective
    # needs; HF's extra vocabulary logits for unmasked positions are not counted as useful work.
    flops_per_token = ours.estimate_flops_per_token(args.seq, args.mask_rate)
    print(f"model: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, vocab {args.vocab}, "
          f"{ours.num_params() / 1e6:.1f} M parameters; batch {args.batch} x {args.seq}, "
          f"{(batch.mlm_labels != -100).sum().item()} masked tokens; "
          f"{flops_per_token * args.batch * args.seq / 1e12:.3g} TFLOP per step")

    hf = None if args.no_hf else build_hf(config, device)
    if hf is not None:
        torch.backends.cuda.matmul.allow_tf32 = False  # compare in true fp32
        print(f"parity: HF with deepgen's weights, max |logit diff| = {parity(ours, hf, batch):.2e} (fp32, eval)")
        torch.backends.cuda.matmul.allow_tf32 = True
        # HF keeps deepgen's weights: both train from the same start, so their first losses agree

    results = {}
    for label, model, step_fn in (("deepgen", ours, pretrain_step), ("hf", hf, hf_pretrain_step)):
        if model is None:
            continue
        opt = configure_optimizers(model, args.weight_decay, args.lr, fused=True)
        run = torch.compile(model) if args.compile else model
        seconds, first_loss, mem = time_steps(functools.partial(step_fn, run, opt, batch), args, device)
        tokens_per_s = args.batch * args.seq / seconds
        results[label] = args.batch / seconds
        mfu = flops_per_token * tokens_per_s / peak
        print(f"{label:8s} {seconds * 1e3:9.1f} ms/step  {args.batch / seconds:9.1f} seq/s  "
              f"MFU {mfu:6.1%}  first loss {first_loss:.3f}"
              + (f"  peak memory {mem:.1f} GiB" if mem is not None else ""))
        del opt, run
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if len(results) == 2:
        print(f"deepgen / hf: {results['deepgen'] / results['hf']:.2f}x sequences/s")


if __name__ == "__main__":
    main()
