"""BERT (Devlin et al., 2019): a bidirectional Transformer encoder pretrained by masked language modelling
(MLM) and next sentence prediction (NSP), then fine-tuned with a thin head per task.

    embeddings  token + position + segment, LayerNorm, dropout                        (B, T, C)
    L layers    x = LN(x + Drop(Attn(x)));  x = LN(x + Drop(W2 GELU(W1 x)))   (post-LN)  (B, T, C)
    pooler      tanh(W h_[CLS])                                                       (B, C)
    MLM head    decoder(LN(GELU(W h_i))) for the masked positions i only; decoder = token embeddings^T
    NSP head    linear on the pooled [CLS]: is sentence B the one that followed sentence A?

The MLM head runs on the ~15% of positions that carry a label: a (M, V) logits matrix instead of
(B*T, V), which at V = 30522 is most of the head's FLOPs and memory.

What a training task relies on:
    masked, labels = mask_tokens(input_ids, SpecialTokens(...), vocab_size)      dynamic masking per batch
    out = BertForPreTraining(cfg)(masked, segment_ids, attention_mask, labels, nsp_labels)
    out.loss, out.mlm_loss, out.nsp_loss; out.mlm_correct / out.mlm_count = MLM accuracy (sum them across
    batches and workers before dividing), out.nsp_correct / out.nsp_count likewise
    clf = BertForSequenceClassification(cfg, num_labels); clf.load_encoder_state(pretrained.state_dict())
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from deepgen.models.attention import AttentionConfig, MultiHeadSelfAttention, sinusoidal_positions

IGNORE_INDEX = -100  # label of a position MLM does not predict (the F.cross_entropy default)


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072  # feed-forward width, 4 * hidden in the paper
    max_len: int = 512  # longest sequence the position embeddings cover
    type_vocab_size: int = 2  # segments: sentence A and sentence B
    dropout: float = 0.1  # on embeddings, attention output and feed-forward output
    attention_dropout: float = 0.1  # on attention probabilities
    position: str = "learned"  # "learned" (BERT) or "sinusoidal" (fixed, Vaswani et al.)
    pad_id: int = 0
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.position not in ("learned", "sinusoidal"):
            raise ValueError(f"position must be 'learned' or 'sinusoidal', got {self.position!r}")
        AttentionConfig(self.hidden, self.heads)  # checks hidden % heads


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens; the defaults are those of the bert-base-uncased WordPiece vocabulary."""

    pad: int = 0
    unk: int = 100
    cls: int = 101
    sep: int = 102
    mask: int = 103

    @property
    def ids(self) -> tuple[int, ...]:
        return (self.pad, self.unk, self.cls, self.sep, self.mask)


# --- dynamic masking (Devlin et al., 3.1 and appendix A.1) ------------------------------------------


def mask_tokens(input_ids: torch.Tensor, special: SpecialTokens, vocab_size: int, rate: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, T) -> (masked_input_ids (B, T), labels (B, T)); labels = the original id at the
    selected positions, IGNORE_INDEX elsewhere.

    Per sequence, round(rate * n) of its n eligible tokens (not special, not pad) are selected, at least
    one when n > 0, as BERT's data generation does; of those, each becomes [MASK] with probability 0.8, a
    random non-special token with 0.1, and stays unchanged with 0.1. A fixed count per sequence (rather
    than a coin per token) keeps the number of MLM predictions per batch steady."""
    device = input_ids.device
    special_ids = torch.tensor(special.ids, device=device)
    eligible = ~torch.isin(input_ids, special_ids)  # (B, T)
    n = eligible.sum(1)  # (B,)
    n_pick = torch.where(n > 0, (rate * n).round().clamp(min=1), 0)  # (B,)
    # rank the eligible tokens of each row in a random order; ineligible ones sort last (score 2 > any rand)
    score = torch.rand(input_ids.shape, generator=generator, device=device).masked_fill(~eligible, 2.0)
    rank = score.argsort(dim=1).argsort(dim=1)  # (B, T) position of each token in its row's order
    selected = (rank < n_pick[:, None]) & eligible

    u = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed[special_ids[special_ids < vocab_size]] = False
    allowed = allowed.nonzero().squeeze(1)  # (V',) the ids a random replacement may take
    random_ids = allowed[torch.randint(len(allowed), input_ids.shape, generator=generator, device=device)]

    masked = torch.where(to_mask, special.mask, input_ids)
    masked = torch.where(to_random, random_ids, masked)
    labels = torch.where(selected, input_ids, IGNORE_INDEX)
    return masked, labels


# --- building blocks --------------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.word = nn.Embedding(config.vocab_size, config.hidden, padding_idx=config.pad_id)
        if config.position == "learned":
            self.position = nn.Embedding(config.max_len, config.hidden)
        else:  # fixed: a buffer, not a parameter, and not saved (it is recomputed from the config)
            self.register_buffer("position_table", sinusoidal_positions(config.max_len, config.hidden),
                                 persistent=False)
        self.segment = nn.Embedding(config.type_vocab_size, config.hidden)
        self.norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def positions(self, T: int) -> torch.Tensor:
        if self.config.position == "learned":
            return self.position.weight[:T]  # (T, C)
        return self.position_table[:T]  # (T, C)

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, segment_ids (B, T) -> (B, T, C); segment_ids None = every token in sentence A."""
        x = self.word(input_ids) + self.positions(input_ids.size(1))  # (B, T, C)
        x = x + (self.segment(segment_ids) if segment_ids is not None else self.segment.weight[0])
        return self.dropout(self.norm(x))


class BertLayer(nn.Module):
    """One post-LN encoder layer, as in the paper: the LayerNorm comes after each residual sum."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = MultiHeadSelfAttention(AttentionConfig(config.hidden, config.heads,
                                                                config.attention_dropout))
        self.attention_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden, config.intermediate)
        self.output = nn.Linear(config.intermediate, config.hidden)
        self.output_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C), attention_mask (B, T) bool True = real token, or None -> (B, T, C)."""
        x = self.attention_norm(x + self.dropout(self.attention(x, attention_mask)))
        h = F.gelu(self.intermediate(x))  # (B, T, intermediate); exact (erf) GELU, as BERT
        return self.output_norm(x + self.dropout(self.output(h)))


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.layers))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, attention_mask)
        return x


class BertOutput(NamedTuple):
    """NamedTuple, not dataclass: DDP and torch.compile look inside tuples for the graph's tensors."""

    sequence_output: torch.Tensor  # (B, T, C) last layer, every position
    pooled_output: torch.Tensor  # (B, C) tanh(W h_[CLS])


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std) weights, zero biases, LayerNorm scale 1 and shift 0, zero pad row."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, std)
        if module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BertModel(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = nn.Linear(config.hidden, config.hidden)

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> BertOutput:
        """input_ids (B, T); segment_ids (B, T) or None; attention_mask (B, T) bool/0-1, True = real token,
        or None when the batch has no padding (lets SDPA use its fastest kernel)."""
        if attention_mask is not None:
            attention_mask = attention_mask.bool()
        x = self.encoder(self.embeddings(input_ids, segment_ids), attention_mask)  # (B, T, C)
        return BertOutput(x, torch.tanh(self.pooler(x[:, 0])))


# --- pretraining: MLM + NSP -------------------------------------------------------------------------


class BertMLMHead(nn.Module):
    """h (N, C) -> vocabulary logits (N, V); the decoder weight is the token embedding matrix (tied), so
    input and output token representations are one parameter, as in BERT."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = nn.Linear(config.hidden, config.hidden)
        self.norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.decoder_weight = word_embeddings.weight  # (V, C), shared
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.transform(h)))  # (N, C)
        return F.linear(h, self.decoder_weight, self.bias)  # (N, V)


class BertPreTrainingOutput(NamedTuple):
    mlm_logits: torch.Tensor | None  # (M, V) for the M masked positions only, in row-major order
    nsp_logits: torch.Tensor  # (B, 2); class 0 = sentence B follows A (IsNext), 1 = random (NotNext)
    loss: torch.Tensor | None  # mlm_loss + nsp_loss, over those given labels
    mlm_loss: torch.Tensor | None  # mean cross-entropy over the masked positions
    nsp_loss: torch.Tensor | None
    mlm_correct: torch.Tensor | None  # () number of masked positions predicted right
    mlm_count: torch.Tensor | None  # () number of masked positions M
    nsp_correct: torch.Tensor | None
    nsp_count: torch.Tensor | None


class BertForPreTraining(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm = BertMLMHead(config, self.bert.embeddings.word)
        self.nsp = nn.Linear(config.hidden, 2)
        self.apply(lambda m: init_bert_weights(m, config.init_std))

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, mlm_labels: torch.Tensor | None = None,
                nsp_labels: torch.Tensor | None = None) -> BertPreTrainingOutput:
        """mlm_labels (B, T): the original id at masked positions, IGNORE_INDEX elsewhere; nsp_labels (B,)."""
        seq, pooled = self.bert(input_ids, segment_ids, attention_mask)
        nsp_logits = self.nsp(pooled)  # (B, 2)
        mlm_logits = mlm_loss = mlm_correct = mlm_count = None
        if mlm_labels is not None:
            # gather first, then the head: logits only for the M masked positions, never for all B*T
            flat = mlm_labels.reshape(-1)  # (B*T,)
            where = (flat != IGNORE_INDEX).nonzero().squeeze(1)  # (M,)
            targets = flat[where]  # (M,)
            mlm_logits = self.mlm(seq.reshape(-1, seq.size(-1))[where])  # (M, V)
            # sum / max(M, 1): a batch with nothing masked gives loss 0, not the NaN of an empty mean
            mlm_loss = F.cross_entropy(mlm_logits.float(), targets, reduction="sum") / max(len(targets), 1)
            mlm_correct = (mlm_logits.argmax(-1) == targets).sum()
            mlm_count = torch.tensor(len(targets), device=flat.device)
        nsp_loss = nsp_correct = nsp_count = None
        if nsp_labels is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_labels)
            nsp_correct = (nsp_logits.argmax(-1) == nsp_labels).sum()
            nsp_count = torch.tensor(len(nsp_labels), device=nsp_labels.device)
        losses = [t for t in (mlm_loss, nsp_loss) if t is not None]
        loss = sum(losses[1:], losses[0]) if losses else None
        return BertPreTrainingOutput(mlm_logits, nsp_logits, loss, mlm_loss, nsp_loss,
                                     mlm_correct, mlm_count, nsp_correct, nsp_count)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameters counted once (the tied decoder is the token embedding); exclude_embeddings drops
        the token, position and segment tables, which are lookups, not matmuls."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(p.numel() for p in self.bert.embeddings.parameters()
                     if p.dim() == 2)  # the three tables, not the LayerNorm
        return n

    def estimate_flops_per_token(self, seq_len: int, mlm_rate: float = 0.15) -> float:
        """Training FLOPs (forward + backward) per input token, counting matmuls only (Kaplan et al. 2020;
        nanoGPT's estimate_mfu):
            6 * N_layers                      every weight of the L layers, 2 FLOPs per MAC, x3 fwd+bwd
          + 12 * L * C * T                    attention scores QK^T and weighted sum AV: 2 * 2*T*C fwd, x3
          + 6 * mlm_rate * (C*C + C*V)        MLM transform + tied decoder, on the masked positions only
        Pooler and NSP (per sequence, not per token) are left out: < 0.01% at T = 128."""
        c = self.config
        n_layers = sum(p.numel() for p in self.bert.encoder.parameters())
        attention = 12 * c.layers * c.hidden * seq_len
        mlm_head = 6 * mlm_rate * (c.hidden ** 2 + c.hidden * c.vocab_size)
        return 6 * n_layers + attention + mlm_head

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float, seq_len: int,
                     mlm_rate: float = 0.15) -> float:
        """Model FLOPs utilisation: achieved model FLOP/s over the device's peak (e.g. a measured bf16
        matmul ceiling)."""
        return self.estimate_flops_per_token(seq_len, mlm_rate) * tokens_per_second / peak_flops

    def configure_optimizers(self, weight_decay: float, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                             eps: float = 1e-6, fused: bool | None = None) -> torch.optim.AdamW:
        return configure_optimizers(self, weight_decay, lr, betas, eps, fused)


def configure_optimizers(model: nn.Module, weight_decay: float, lr: float,
                         betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                         fused: bool | None = None, layer_lr_decay: float = 1.0) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (linear weights and embedding tables); biases and LayerNorm
    parameters (all 1-D) are not decayed, as in BERT. fused None = fused when the parameters are on CUDA.

    layer_lr_decay d < 1 (layer-wise learning-rate decay, as in ELECTRA's fine-tuning): what sits above the
    encoder (pooler, heads) learns at lr, the top encoder layer at d * lr, each layer below at d times the one
    above it, the embeddings at d ** (layers + 1) * lr, so fine-tuning moves what pretraining learnt in the
    lower layers less. Each group's factor is its `lr_scale`, which the loop's schedule honours."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # tied parameters appear once
    layers = len(bert_of(model).encoder.layers)
    groups: dict[tuple[float, bool], dict] = {}  # (lr_scale, not a matrix): with no decay, the two groups of old
    for name, p in named:
        scale = layer_lr_decay ** (layers + 1 - layer_depth(strip_wrappers(name), layers))
        groups.setdefault((scale, p.dim() < 2), {"params": [], "weight_decay": weight_decay if p.dim() >= 2 else 0.0,
                                                 "lr_scale": scale, "lr": lr * scale})["params"].append(p)
    ordered = [groups[k] for k in sorted(groups)]  # lowest rate first; matrices before the rest
    if fused is None:
        fused = named[0][1].is_cuda
    return torch.optim.AdamW(ordered, lr=lr, betas=betas, eps=eps, fused=fused)


def bert_of(model: nn.Module) -> BertModel:
    """The BertModel inside a pretraining or classification model (or the model itself)."""
    return model if isinstance(model, BertModel) else model.bert


def layer_depth(name: str, layers: int) -> int:
    """0 for the embeddings, i + 1 for encoder layer i, layers + 1 for the rest (pooler, heads)."""
    name = name.removeprefix("bert.")
    if name.startswith("embeddings."):
        return 0
    if name.startswith("encoder.layers."):
        return int(name.split(".")[2]) + 1
    return layers + 1


# --- fine-tuning ------------------------------------------------------------------------------------


class SequenceClassifierOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None
    correct: torch.Tensor | None  # () number of rows predicted right
    count: torch.Tensor | None


def strip_wrappers(key: str) -> str:
    """State-dict key without the prefixes torch.compile ("_orig_mod.") and DDP ("module.") add, in
    whichever order they were nested (DDP(compile(m)) gives "module._orig_mod.")."""
    while key.startswith(("_orig_mod.", "module.")):
        key = key.split(".", 1)[1]
    return key


POOLINGS = ("mean", "cls")


def pool_text(out: BertOutput, real: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per text (B, C) from the encoder's output: "cls", BERT's pooled [CLS] tanh(W h_[CLS]);
    "mean", the last layer averaged over the real tokens (`real` (B, T): True where a token is not padding)."""
    if pooling == "cls":
        return out.pooled_output
    weights = real.unsqueeze(-1).to(out.sequence_output.dtype)  # (B, T, 1)
    return (out.sequence_output * weights).sum(1) / weights.sum(1).clamp(min=1)


class BertForSequenceClassification(nn.Module):
    """The encoder, dropout, and one linear layer on one vector per text: pooling "cls" is BERT's pooled
    [CLS] representation tanh(W h_[CLS]) (the vector NSP pretraining trains), "mean" the mean of the last
    layer over the real tokens (the pooler unused)."""

    def __init__(self, config: BertConfig, num_labels: int, dropout: float | None = None, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
        self.config = config
        self.num_labels = num_labels
        self.pooling = pooling
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.dropout if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden, num_labels)
        self.apply(lambda m: init_bert_weights(m, config.init_std))

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        real = (input_ids != self.config.pad_id) if attention_mask is None else attention_mask.bool()
        pooled = pool_text(self.bert(input_ids, segment_ids, attention_mask), real, self.pooling)  # (B, C)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        if labels is None:
            return SequenceClassifierOutput(logits, None, None, None)
        loss = F.cross_entropy(logits.float(), labels)
        correct = (logits.argmax(-1) == labels).sum()
        return SequenceClassifierOutput(logits, loss, correct, torch.tensor(len(labels), device=labels.device))

    def load_encoder_state(self, state_dict: dict[str, torch.Tensor]):
        """Load the encoder (`bert.*` keys) of a pretrained model's state dict, e.g. a BertForPreTraining's,
        possibly compiled or DDP-wrapped; its heads are ignored and the classifier keeps its fresh init.
        Returns (missing_keys, unexpected_keys) of the encoder; raises on a shape mismatch."""
        encoder = {k[len("bert."):]: v for k, v in ((strip_wrappers(k), v) for k, v in state_dict.items())
                   if k.startswith("bert.")}
        if not encoder:
            raise ValueError("no 'bert.' keys in the state dict: is it a BertForPreTraining's?")
        return self.bert.load_state_dict(encoder, strict=False)

    @classmethod
    def from_pretraining(cls, pretrained: BertForPreTraining, num_labels: int,
                         dropout: float | None = None) -> BertForSequenceClassification:
        """A classifier whose encoder is a copy of `pretrained`'s; dropout None keeps the config's."""
        config = pretrained.config
        if dropout is not None:
            config = replace(config, dropout=dropout)
        model = cls(config, num_labels).to(next(pretrained.parameters()).device)
        result = model.load_encoder_state(pretrained.state_dict())
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"encoder mismatch: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
        return model
