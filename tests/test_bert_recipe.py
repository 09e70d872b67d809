"""benchmarks/bert_recipe.py's reference for NSP: what a word-overlap rule gets without any training."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bert_recipe import nsp_overlap_accuracy  # noqa: E402

CLS, SEP = 2, 3


def pair(a: list[int], b: list[int], tail: list[int] = (), t: int = 10) -> tuple[list[int], list[int], int]:
    ids = [CLS, *a, SEP, *b, SEP]
    seg = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    length = len(ids)
    ids += list(tail) + [0] * (t - length - len(tail))  # after `length`: padding (or junk) to be ignored
    seg += [1] * (t - length)
    return ids, seg, length


def batch(rows, is_next):
    ids, seg, length = zip(*rows)
    return {"input_ids": torch.tensor(ids), "segment_ids": torch.tensor(seg), "length": torch.tensor(length),
            "is_next": torch.tensor(is_next, dtype=torch.int8)}


def test_the_rule_counts_rare_shared_tokens_only_within_the_real_tokens():
    train_ids = torch.tensor([10] * 100 + list(range(20, 40)))  # 10 is the one frequent token
    data = batch([pair([10, 20], [20, 21]),          # shares the rare 20: "next"
                  pair([10, 22], [10, 23]),          # shares only the frequent 10: "not next"
                  pair([24], [25], tail=[24]),       # 24 again only past the row's length: "not next"
                  pair([26], [27])],                 # shares only [CLS]/[SEP] positions: "not next"
                 [1, 0, 0, 0])
    assert nsp_overlap_accuracy(data, train_ids, skip_top=1) == 1.0
    # counting the frequent token as evidence calls row 1 "next": one of four wrong
    assert nsp_overlap_accuracy(data, train_ids, skip_top=0) == 0.75
    flipped = {**data, "is_next": 1 - data["is_next"]}
    assert nsp_overlap_accuracy(flipped, train_ids, skip_top=1) == 0.0
