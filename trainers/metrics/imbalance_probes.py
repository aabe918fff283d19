"""Which tokens are queries and which form the two key spans, from collated batches (and their instances).

Span pairs:
- `image_text`: a = image tokens, b = text-context tokens (prompt tokens before the first query that are
  neither image nor special tokens); works on any collated batch, e.g. the training probe.
- `evidence`: a and b = the two evidence pieces that `builder=conflict` records in `meta.evidence` (text
  passages, rendered images, two languages), ordered by slot name (cross_modal: image, text; cross_lingual:
  l1, l2); needs the instances beside the tokenized rows.
Both restrict spans to attended tokens before the sequence's first query, so every query sees all of both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xmodal.core.console import progress_bar
from xmodal.core.tokens import IGNORE_INDEX, image_token_id
from xmodal.trainers.metrics.imbalance import measure

QUERY_SETS = ("last_prompt", "answer")
SPAN_PAIRS = ("image_text", "evidence")


@dataclass
class ProbeMasks:
    """`[B, T]` booleans: the query tokens and the two key spans; `span_names` say what a and b are."""

    query: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    span_names: tuple[str, str]


def answer_queries(labels: torch.Tensor) -> torch.Tensor:
    return labels != IGNORE_INDEX


def last_prompt_queries(labels: torch.Tensor) -> torch.Tensor:
    """The token right before each supervised answer span: the position that predicts the answer's first token."""
    answer = labels != IGNORE_INDEX
    queries = torch.zeros_like(answer)
    queries[:, :-1] = answer[:, 1:] & ~answer[:, :-1]
    return queries


def probe_masks(
    batch: dict,
    image_token: int,
    special_ids: list[int],
    query: str = "last_prompt",
    spans: str = "image_text",
    instances: list[dict] | None = None,
    tokenizer=None,
) -> ProbeMasks:
    """Query set and span masks of a collated batch (`input_ids`, `attention_mask`, `labels`).

    `spans="evidence"` also needs the batch rows' `instances` and the `tokenizer` that encoded them.
    """
    if query not in QUERY_SETS:
        raise ValueError(f"query must be one of {QUERY_SETS}, got {query!r}")
    if spans not in SPAN_PAIRS:
        raise ValueError(f"spans must be one of {SPAN_PAIRS}, got {spans!r}")
    input_ids = batch["input_ids"]
    queries = last_prompt_queries(batch["labels"]) if query == "last_prompt" else answer_queries(batch["labels"])
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    first_query = torch.where(queries, positions, input_ids.shape[1]).amin(-1, keepdim=True)
    context = batch["attention_mask"].bool() & (positions < first_query)
    if spans == "image_text":
        image = input_ids == image_token
        special = torch.isin(input_ids, torch.tensor(special_ids, device=input_ids.device))
        return ProbeMasks(queries, context & image, context & ~image & ~special, ("image", "text"))
    if instances is None or tokenizer is None:
        raise ValueError("spans='evidence' needs the batch's instances and the tokenizer")
    names, mask_a, mask_b = _evidence_masks(batch, instances, tokenizer, image_token)
    return ProbeMasks(queries, context & mask_a, context & mask_b, names)


def _evidence_masks(batch: dict, instances: list[dict], tokenizer, image_token: int):
    mask_a = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    mask_b = torch.zeros_like(mask_a)
    names = None
    for row, instance in enumerate(instances):
        attended = batch["attention_mask"][row].nonzero().flatten()
        start, stop = int(attended[0]), int(attended[-1]) + 1  # left or right padding
        ids = batch["input_ids"][row, start:stop].tolist()
        row_names, piece_a, piece_b = evidence_spans(instance, ids, tokenizer, image_token)
        if names is not None and row_names != names:
            raise ValueError(f"instance {instance.get('id')!r}: evidence slots {row_names} differ from {names} in its batch")
        names = row_names
        mask_a[row, start:stop], mask_b[row, start:stop] = piece_a, piece_b
    return names, mask_a, mask_b


def evidence_spans(instance: dict, ids: list[int], tokenizer, image_token: int):
    """`((slot a, slot b), mask_a, mask_b)`: `[len(ids)]` masks of the two evidence pieces of one instance.

    An image piece is the run of image tokens of its `image_index`. A text piece is located in the decoded
    prompt by walking the first user message's parts in order up to its `part_index`; every token whose
    characters overlap the passage belongs to it (a token may also hold the space before it).
    """
    evidence = sorted((instance.get("meta") or {}).get("evidence", []), key=lambda piece: piece["slot"])
    if len(evidence) != 2:
        raise ValueError(f"instance {instance.get('id')!r}: spans='evidence' needs two meta.evidence pieces (builder=conflict)")
    image_runs = _image_runs(ids, image_token)
    text, token_ends = _decoded_with_token_ends(ids, tokenizer)
    masks = []
    for piece in evidence:
        mask = torch.zeros(len(ids), dtype=torch.bool)
        if piece["modality"] == "image":
            begin, end = image_runs[piece["image_index"]]
            mask[begin:end] = True
        else:
            char_begin = _text_part_offset(instance, piece, text)
            char_end = char_begin + len(piece["text"])
            token_begins = [0] + token_ends[:-1]
            for position, (token_begin, token_end) in enumerate(zip(token_begins, token_ends)):
                mask[position] = token_begin < char_end and token_end > char_begin
        masks.append(mask)
    return (evidence[0]["slot"], evidence[1]["slot"]), masks[0], masks[1]


def _image_runs(ids: list[int], image_token: int) -> list[tuple[int, int]]:
    """`(begin, end)` of each contiguous run of image tokens, in order (one run per image)."""
    runs = []
    for position, token in enumerate(ids):
        if token == image_token and (position == 0 or ids[position - 1] != image_token):
            runs.append([position, position + 1])
        elif token == image_token:
            runs[-1][1] = position + 1
    return [tuple(run) for run in runs]


def _decoded_with_token_ends(ids: list[int], tokenizer) -> tuple[str, list[int]]:
    """The decoded text and, per token, where its characters end in it (from decoding every prefix)."""
    decode = lambda prefix: tokenizer.decode(prefix, skip_special_tokens=False, clean_up_tokenization_spaces=False)  # noqa: E731
    return decode(ids), [len(decode(ids[: position + 1])) for position in range(len(ids))]


def _text_part_offset(instance: dict, piece: dict, text: str) -> int:
    user = next(message for message in instance["messages"] if message["role"] == "user")
    cursor = 0
    for index, part in enumerate(user["content"][: piece["part_index"] + 1]):
        if part["type"] != "text":
            continue
        found = text.find(part["text"], cursor)
        if found < 0:
            raise ValueError(f"instance {instance.get('id')!r}: text part {index} not found in the decoded prompt")
        cursor = found if index == piece["part_index"] else found + len(part["text"])
    if text[cursor : cursor + len(piece["text"])] != piece["text"]:
        raise ValueError(f"instance {instance.get('id')!r}: evidence {piece['slot']!r} is not part {piece['part_index']}")
    return cursor


def collate_probe(
    rows: list[dict],
    collator,
    model_config,
    processor,
    batch_size: int,
    query: str,
    spans: str,
    instances: list[dict] | None = None,
) -> list[tuple[dict, ProbeMasks]]:
    """`(collated batch, ProbeMasks)` pairs of tokenized `rows`, `batch_size` rows at a time.

    `instances[i]` is the instance `rows[i]` was encoded from (needed by `spans="evidence"` only).
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    image_token = image_token_id(model_config)
    probe = []
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start : start + batch_size])
        batch_instances = instances[start : start + batch_size] if instances is not None else None
        masks = probe_masks(
            batch, image_token, tokenizer.all_special_ids, query, spans, instances=batch_instances, tokenizer=tokenizer
        )
        probe.append((batch, masks))
    return probe


@torch.no_grad()
def probe_totals(
    model, probe: list[tuple[dict, ProbeMasks]], prepare, *, layers: list[int] | None, mode: str, rank: int = 0,
    world: int = 1, progress: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """`(sums over the valid sequences [quantities, L, H], their count, the measured layers)` of `probe`'s batches,
    each made model inputs by `prepare(batch)` and measured with `measure(..., layers, mode)`.

    Rank `rank` of `world` measures batches rank, rank + world, ...; a rank short of batches repeats batch 0 without
    counting it, so every rank runs the same number of (collective, under ZeRO-3) forwards; the caller all-reduces.
    `progress`: the description of a progress bar over the batches (none without one).
    """
    sums = count = measured_layers = None
    turns = range(math.ceil(len(probe) / world))
    for turn in turns if progress is None else progress_bar(turns, progress):
        index = turn * world + rank
        counted = index < len(probe)
        batch, masks = probe[index if counted else 0]
        measured = measure(model, prepare(batch), masks.query, masks.a, masks.b, layers=layers, mode=mode)
        batch_sums, batch_count = measured.totals()
        if not counted:
            batch_sums, batch_count = torch.zeros_like(batch_sums), torch.zeros_like(batch_count)
        sums = batch_sums if sums is None else sums + batch_sums
        count = batch_count if count is None else count + batch_count
        measured_layers = measured.layers
    return sums, count, measured_layers
