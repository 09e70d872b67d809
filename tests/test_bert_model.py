import math

import pytest
import torch
import torch.nn.functional as F

from deepgen.models.attention import AttentionConfig, MultiHeadSelfAttention, reference_attention, sinusoidal_positions
from deepgen.models.bert import (
    IGNORE_INDEX,
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    SpecialTokens,
    mask_tokens,
)

SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4)
FIRST_WORD = 5  # ids below are special


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small gain nothing from intra-op threads, and on a busy 2-core machine two threads
    spin-wait on each other: a 150-step loop took 100 s with 2 threads and 8 s with 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> BertConfig:
    base = dict(vocab_size=60, hidden=32, layers=2, heads=4, intermediate=64, max_len=64,
                dropout=0.0, attention_dropout=0.0)
    return BertConfig(**{**base, **overrides})


def sentences(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """(batch, length): [CLS] words [SEP]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_WORD, vocab, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = SPECIAL.cls, SPECIAL.sep
    return ids


# (a) the SDPA module is the attention formula --------------------------------------------------------


def test_sdpa_attention_equals_the_reference_with_padding():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(AttentionConfig(hidden=32, heads=4)).eval()
    x = torch.randn(3, 10, 32)
    lengths = torch.tensor([10, 7, 2])  # no padding, some, most
    mask = torch.arange(10)[None, :] < lengths[:, None]  # (B, T) True = real
    q, k, v = (t.view(3, 10, 4, 8).transpose(1, 2) for t in attn.qkv(x).split(32, dim=2))
    expected = attn.proj(reference_attention(q, k, v, mask).transpose(1, 2).reshape(3, 10, 32))
    torch.testing.assert_close(attn(x, mask), expected, atol=1e-5, rtol=0)
    # the mask matters: pad keys change the answer when they are not masked out
    assert not torch.allclose(attn(x, None)[1:], expected[1:], atol=1e-3)


def test_reference_attention_ignores_pad_keys():
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    mask = torch.tensor([[True, True, True, False, False]])
    k2, v2 = k.clone(), v.clone()
    k2[..., 3:, :], v2[..., 3:, :] = 100.0, -100.0  # garbage in the pad slots
    torch.testing.assert_close(reference_attention(q, k, v, mask), reference_attention(q, k2, v2, mask))


# (b) padding does not change the real tokens' outputs ------------------------------------------------


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_padded_batch_matches_each_sequence_alone(position):
    torch.manual_seed(0)
    model = BertModel(tiny(position=position)).eval()
    seqs = [sentences(1, n, 60, seed=n)[0] for n in (12, 5, 9)]
    batch = torch.full((3, 12), SPECIAL.pad)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
    segments = (torch.arange(12) >= 4).long().expand(3, 12)  # sentence B from position 4 on
    out = model(batch, segments, batch != SPECIAL.pad)
    for i, s in enumerate(seqs):
        alone = model(s[None], segments[:1, : len(s)])
        torch.testing.assert_close(out.sequence_output[i, : len(s)], alone.sequence_output[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.pooled_output[i], alone.pooled_output[0], atol=1e-5, rtol=0)
    # without the mask the short sequences would see their pads
    unmasked = model(batch, segments).sequence_output
    assert not torch.allclose(unmasked[1, :5], out.sequence_output[1, :5], atol=1e-3)


# (c) dynamic masking ---------------------------------------------------------------------------------


def test_masking_statistics_on_a_large_batch():
    vocab, g = 1000, torch.Generator().manual_seed(0)
    ids = sentences(512, 128, vocab, seed=1)
    lengths = torch.randint(20, 129, (512,), generator=g)
    ids[torch.arange(128)[None, :] >= lengths[:, None]] = SPECIAL.pad
    ids[torch.arange(512), lengths - 1] = SPECIAL.sep
    ids[:, 40] = torch.where(ids[:, 40] == SPECIAL.pad, SPECIAL.pad, SPECIAL.unk)  # some unk mid-sentence
    eligible = ids >= FIRST_WORD

    masked, labels = mask_tokens(ids, SPECIAL, vocab, rate=0.15, generator=g)
    selected = labels != IGNORE_INDEX
    assert not (selected & ~eligible).any()  # never special or pad
    assert torch.equal(labels[selected], ids[selected])  # the label is the original token
    assert torch.equal(masked[~selected], ids[~selected])  # nothing else changes
    # round(0.15 n) per row: 512 rows, ~36,600 eligible tokens; rounding moves each row by at most half
    # a token, so the overall rate by at most 256 / 36,600 = 0.007 (in practice far less, it averages out)
    rate = selected.sum() / eligible.sum()
    assert abs(rate.item() - 0.15) < 0.01, rate
    n_sel = selected.sum().item()  # ~5,500: the 80/10/10 split is binomial, sd <= sqrt(0.25 / n) ~ 0.007
    is_mask = (masked == SPECIAL.mask) & selected
    unchanged = (masked == ids) & selected
    is_random = selected & ~is_mask & ~unchanged
    tol = 4 * math.sqrt(0.8 * 0.2 / n_sel)  # 4 sd, ~0.022
    assert abs(is_mask.sum().item() / n_sel - 0.8) < tol
    # a random draw equals the original with p 1/995: the 'unchanged' share is 0.1 + 0.0001
    for share in (unchanged, is_random):
        assert abs(share.sum().item() / n_sel - 0.1) < 4 * math.sqrt(0.1 * 0.9 / n_sel)
    assert (masked[is_random] >= FIRST_WORD).all()  # random replacements are never special tokens


def test_masking_picks_at_least_one_token_where_it_can():
    ids = torch.tensor([[2, 7, 8, 3, 0, 0],  # two eligible: round(0.3) = 0, but one is picked
                        [2, 3, 0, 0, 0, 0]])  # none eligible: nothing picked
    for seed in range(20):
        _, labels = mask_tokens(ids, SPECIAL, 60, generator=torch.Generator().manual_seed(seed))
        assert (labels[0] != IGNORE_INDEX).sum() == 1 and (labels[1] == IGNORE_INDEX).all()


# (d) the MLM head runs on the masked positions only ----------------------------------------------------


def test_mlm_head_gathers_masked_positions_and_matches_dense_loss():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny()).eval()
    ids = sentences(4, 20, 60)
    masked, labels = mask_tokens(ids, SPECIAL, 60, generator=torch.Generator().manual_seed(0))
    nsp = torch.tensor([0, 1, 1, 0])
    head_rows = []  # rows the MLM head was run on, call by call
    model.mlm.register_forward_hook(lambda mod, inputs, output: head_rows.append(output.shape[:-1]))
    out = model(masked, None, None, labels, nsp)
    m = (labels != IGNORE_INDEX).sum().item()
    assert m == 4 * round(0.15 * 18) and out.mlm_logits.shape == (m, 60) and out.mlm_count.item() == m
    assert head_rows == [(m,)]  # the vocabulary projection saw the masked rows only, never all B*T

    # the same thing computed densely: the head on every position, the loss restricted by ignore_index
    seq, pooled = model.bert(masked)
    dense = model.mlm(seq)  # (B, T, V)
    torch.testing.assert_close(out.mlm_logits, dense[labels != IGNORE_INDEX])
    dense_loss = F.cross_entropy(dense.view(-1, 60), labels.view(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.mlm_loss, dense_loss)
    nsp_loss = F.cross_entropy(model.nsp(pooled), nsp)
    torch.testing.assert_close(out.loss, dense_loss + nsp_loss)
    assert out.mlm_correct == (dense[labels != IGNORE_INDEX].argmax(-1) == ids[labels != IGNORE_INDEX]).sum()
    assert out.nsp_count == 4


def test_mlm_decoder_is_tied_to_the_token_embeddings():
    model = BertForPreTraining(tiny())
    assert model.mlm.decoder_weight is model.bert.embeddings.word.weight
    groups = model.configure_optimizers(weight_decay=0.01, lr=1e-3, fused=False).param_groups
    decayed, plain = ({id(p) for p in g["params"]} for g in groups)
    all_params = list(model.parameters())
    assert len(decayed) + len(plain) == len(all_params)  # the tied matrix counted once
    assert id(model.bert.embeddings.word.weight) in decayed
    assert id(model.bert.embeddings.norm.weight) in plain and id(model.mlm.bias) in plain
    assert all(p.dim() >= 2 for p in all_params if id(p) in decayed)


def test_layer_wise_lr_decay_scales_each_layer_below_the_top_and_the_schedule_keeps_the_scales():
    from deepgen.config import TrainSpec
    from deepgen.models.bert import configure_optimizers
    from deepgen.train.optim import Schedule

    model = BertForSequenceClassification(tiny(layers=3), num_labels=2)
    opt = configure_optimizers(model, weight_decay=0.01, lr=1.0, fused=False, layer_lr_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert len(scale) == len(list(model.parameters()))  # every parameter in exactly one group
    b = model.bert
    assert scale[id(b.embeddings.word.weight)] == scale[id(b.embeddings.norm.weight)] == 0.5 ** 4
    assert [scale[id(layer.intermediate.weight)] for layer in b.encoder.layers] == [0.5 ** 3, 0.5 ** 2, 0.5]
    assert scale[id(b.pooler.weight)] == scale[id(model.classifier.weight)] == scale[id(model.classifier.bias)] == 1
    assert all(g["weight_decay"] == (0.01 if g["params"][0].dim() >= 2 else 0.0) for g in opt.param_groups)
    schedule = Schedule(TrainSpec(lr=0.1, epochs=1, batch_size=4, lr_decay="constant"), 10)
    model(sentences(4, 8, 60)).logits.sum().backward()
    schedule.step(model, opt)
    assert [g["lr"] / g["lr_scale"] for g in opt.param_groups] == pytest.approx([0.1] * len(opt.param_groups))
    # 1: the two groups of before (matrices decayed first, then the rest), all at lr
    plain = configure_optimizers(model, weight_decay=0.01, lr=1.0, fused=False).param_groups
    assert [(g["weight_decay"], g["lr_scale"]) for g in plain] == [(0.01, 1.0), (0.0, 1.0)]


# (e) a tiny model memorises a tiny corpus ---------------------------------------------------------------


def test_tiny_model_overfits_a_fixed_corpus():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny(vocab_size=40, hidden=64, heads=2, intermediate=128))
    opt = model.configure_optimizers(weight_decay=0.0, lr=2e-3, fused=False)
    corpus = sentences(4, 16, 40, seed=3)  # 4 x 14 random words to memorise
    # scored on 4 fixed maskings of the corpus (~32 predictions), the same before and after
    eval_masked, eval_labels = mask_tokens(corpus.repeat(4, 1), SPECIAL, 40,
                                           generator=torch.Generator().manual_seed(99))

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = model(eval_masked, None, None, eval_labels).mlm_loss.item()
        model.train()
        return loss

    start, g = eval_loss(), torch.Generator().manual_seed(1)
    for _ in range(200):
        masked, labels = mask_tokens(corpus, SPECIAL, 40, generator=g)  # a fresh mask every step
        model(masked, None, None, labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    end = eval_loss()
    assert start > 0.9 * math.log(35)  # it starts near chance over the 35 word ids
    assert end < 0.3 * start, (start, end)


# (f) sinusoidal positions ----------------------------------------------------------------------------------


def test_sinusoidal_positions_follow_the_formula_and_differ_from_learned():
    table = sinusoidal_positions(50, 32)
    p, i = 7, 3
    assert table[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 32)), abs=1e-6)
    assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 32)), abs=1e-6)
    assert sinusoidal_positions(5, 7).shape == (5, 7)  # odd widths work

    torch.manual_seed(0)
    learned = BertForPreTraining(tiny()).eval()
    fixed = BertForPreTraining(tiny(position="sinusoidal")).eval()
    assert "bert.embeddings.position.weight" not in fixed.state_dict()  # fixed, not a parameter
    result = fixed.load_state_dict(learned.state_dict(), strict=False)  # every other weight shared
    assert result.unexpected_keys == ["bert.embeddings.position.weight"] and not result.missing_keys
    ids = torch.full((1, 10), 9)  # one token repeated: only the position tells the slots apart
    emb = fixed.bert.embeddings(ids)
    assert not torch.allclose(emb[0, 0], emb[0, 5], atol=1e-3)
    assert not torch.allclose(emb, learned.bert.embeddings(ids), atol=1e-3)
    loss = fixed(*mask_inputs(ids)).loss  # trains end to end
    loss.backward()
    assert fixed.bert.embeddings.word.weight.grad is not None


def mask_inputs(ids: torch.Tensor):
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 3] = ids[:, 3]
    return ids, None, None, labels, torch.zeros(len(ids), dtype=torch.long)


# (g) fine-tuning starts from the pretrained encoder ---------------------------------------------------------


def test_classifier_from_pretraining_carries_the_encoder_weights():
    torch.manual_seed(0)
    pre = BertForPreTraining(tiny())
    opt = pre.configure_optimizers(0.01, 1e-2, fused=False)
    pre(*mask_inputs(sentences(4, 12, 60))).loss.backward()  # move the weights off their init
    opt.step()

    clf = BertForSequenceClassification(tiny(), num_labels=3)
    result = clf.load_encoder_state(pre.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    pre_state = pre.bert.state_dict()
    for key, value in clf.bert.state_dict().items():
        torch.testing.assert_close(value, pre_state[key], rtol=0, atol=0, msg=key)
    pre.eval(), clf.eval()
    ids = sentences(2, 12, 60, seed=5)
    torch.testing.assert_close(clf.bert(ids).pooled_output, pre.bert(ids).pooled_output)
    out = clf(ids, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss.isfinite() and out.count == 2

    # compiled / DDP prefixes are stripped; a different shape is refused, not silently skipped
    wrapped = {"_orig_mod." + k: v for k, v in pre.state_dict().items()}
    assert BertForSequenceClassification.from_pretraining(pre, 3).bert.embeddings.word.weight.equal(
        pre.bert.embeddings.word.weight)
    fresh = BertForSequenceClassification(tiny(), 3)
    assert not fresh.load_encoder_state(wrapped).missing_keys
    ddp_of_compiled = {"module._orig_mod." + k: v for k, v in pre.state_dict().items()}  # DDP(compile(m))
    assert not BertForSequenceClassification(tiny(), 3).load_encoder_state(ddp_of_compiled).missing_keys
    with pytest.raises(RuntimeError, match="size mismatch"):
        BertForSequenceClassification(tiny(hidden=64), 3).load_encoder_state(pre.state_dict())


def test_mean_pooling_reads_the_average_of_the_real_tokens_and_ignores_padding():
    torch.manual_seed(0)
    clf = BertForSequenceClassification(tiny(), num_labels=2, pooling="mean").eval()
    ids = sentences(2, 12, 60, seed=7)
    ids[1, 8:] = 0  # the second text is 8 tokens and 4 pads
    mask = ids != 0
    seq = clf.bert(ids, None, mask).sequence_output
    expected = torch.stack([seq[0].mean(0), seq[1, :8].mean(0)])
    torch.testing.assert_close(clf(ids, None, mask).logits, clf.classifier(expected))
    # the pooler is not read: changing it leaves the logits as they were; with cls it changes them
    cls = BertForSequenceClassification(tiny(), num_labels=2).eval()
    cls.load_state_dict(clf.state_dict())
    before_mean, before_cls = clf(ids).logits, cls(ids).logits
    with torch.no_grad():
        clf.bert.pooler.weight.add_(1.0), cls.bert.pooler.weight.add_(1.0)
    torch.testing.assert_close(clf(ids).logits, before_mean)
    assert not torch.allclose(cls(ids).logits, before_cls)
    with pytest.raises(ValueError, match="pooling 'max'"):
        BertForSequenceClassification(tiny(), 2, pooling="max")
