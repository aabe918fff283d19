"""`imbalance_from_probs` against explicit float64 loops over layers, heads, queries and keys."""

from __future__ import annotations

import math

import torch

from xmodal.trainers.metrics.imbalance import imbalance_from_probs, query_head_groups

LAYERS, HEADS, KV_HEADS, LENGTH, HEAD_DIM, HIDDEN = 2, 4, 2, 7, 3, 5


def random_probs(generator) -> torch.Tensor:
    scores = torch.randn(LAYERS, HEADS, LENGTH, LENGTH, generator=generator, dtype=torch.float64)
    return scores.softmax(-1)


def masks():
    query = torch.tensor([0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    span_a = torch.tensor([1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    span_b = torch.tensor([0, 0, 0, 1, 1, 0, 0], dtype=torch.bool)
    return query, span_a, span_b


def hand_weight_mass(probs, query, span):
    result = torch.zeros(LAYERS, HEADS, dtype=torch.float64)
    queries = [q for q in range(LENGTH) if query[q]]
    for layer in range(LAYERS):
        for head in range(HEADS):
            total = 0.0
            for q in queries:
                total += sum(float(probs[layer, head, q, k]) for k in range(LENGTH) if span[k])
            result[layer, head] = total / len(queries)
    return result


def hand_norm_flow(probs, values, out_weight, query, span):
    result = torch.zeros(LAYERS, HEADS, dtype=torch.float64)
    queries = [q for q in range(LENGTH) if query[q]]
    for layer in range(LAYERS):
        for head in range(HEADS):
            group = head // (HEADS // KV_HEADS)  # heads 0,1 read value head 0; heads 2,3 value head 1
            w_o = out_weight[layer][:, head * HEAD_DIM : (head + 1) * HEAD_DIM]
            total = 0.0
            for q in queries:
                mixed = torch.zeros(HEAD_DIM, dtype=torch.float64)
                for k in range(LENGTH):
                    if span[k]:
                        mixed += probs[layer, head, q, k] * values[layer, group, k]
                total += math.sqrt(sum(float(x) ** 2 for x in w_o @ mixed))
            result[layer, head] = total / len(queries)
    return result


def test_weight_mode_matches_hand_computation():
    generator = torch.Generator().manual_seed(0)
    probs = random_probs(generator)
    query, span_a, span_b = masks()
    stats = imbalance_from_probs(probs, query, span_a, span_b)
    mass_a, mass_b = hand_weight_mass(probs, query, span_a), hand_weight_mass(probs, query, span_b)
    torch.testing.assert_close(stats.mass_a, mass_a)
    torch.testing.assert_close(stats.mass_b, mass_b)
    torch.testing.assert_close(stats.per_token_a, mass_a / 3)
    torch.testing.assert_close(stats.per_token_b, mass_b / 2)
    torch.testing.assert_close(stats.ratio, mass_a / (mass_a + mass_b))
    torch.testing.assert_close(stats.per_token_ratio, (mass_a / 3) / (mass_a / 3 + mass_b / 2))


def test_uniform_attention_is_balanced_per_token():
    query, span_a, span_b = torch.ones(4, dtype=torch.bool), torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([0, 0, 1, 1]).bool()
    probs = torch.full((1, 1, 4, 4), 0.25, dtype=torch.float64)
    stats = imbalance_from_probs(probs, query, span_a, span_b)
    assert stats.ratio.item() == 0.5 and stats.per_token_ratio.item() == 0.5


def test_query_heads_map_to_consecutive_kv_groups():
    assert query_head_groups(4, 2).tolist() == [0, 0, 1, 1]
    assert query_head_groups(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    assert query_head_groups(4, 4).tolist() == [0, 1, 2, 3]


def test_norm_mode_matches_hand_computation_with_gqa():
    generator = torch.Generator().manual_seed(1)
    probs = random_probs(generator)
    values = torch.randn(LAYERS, KV_HEADS, LENGTH, HEAD_DIM, generator=generator, dtype=torch.float64)
    out_weight = torch.randn(LAYERS, HIDDEN, HEADS * HEAD_DIM, generator=generator, dtype=torch.float64)
    query, span_a, span_b = masks()
    stats = imbalance_from_probs(probs, query, span_a, span_b, mode="norm", values=values, out_weight=out_weight)
    flow_a = hand_norm_flow(probs, values, out_weight, query, span_a)
    flow_b = hand_norm_flow(probs, values, out_weight, query, span_b)
    torch.testing.assert_close(stats.mass_a, flow_a)
    torch.testing.assert_close(stats.mass_b, flow_b)
    torch.testing.assert_close(stats.ratio, flow_a / (flow_a + flow_b))
