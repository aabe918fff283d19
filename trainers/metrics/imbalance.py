"""Cross-modal attention imbalance: how much attention the query tokens pay to span A vs span B.

Two entry points share one reduction (`summarize_spans`):
- `imbalance_from_probs`: the reference, from explicit attention probabilities of one sequence;
- `measure`: the same statistics from a model forward that keeps sdpa attention. A wrapper registered
  in transformers' `AttentionInterface` runs the model's own sdpa call unchanged and, for the chosen
  language-model layers, a second sdpa call whose values are span indicators (weight mode) or the
  span-masked value vectors (norm mode), so no L x L matrix is ever built.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

MODES = ("weight", "norm")
_PROBE_ATTENTION = "xmodal_span_probe"


@dataclass
class SpanStats:
    """Statistics per layer x head (trailing dims `[layers, heads]`, any leading batch dims).

    `mass_*` is the attention weight on the span (weight mode) or the norm of the head's output
    contributed by the span (norm mode), averaged over the query tokens; `per_token_*` divides it by
    the span length; `ratio` = a / (a + b) and `per_token_ratio` the same on per-token values (0.5 =
    balanced).
    """

    mass_a: torch.Tensor
    mass_b: torch.Tensor
    per_token_a: torch.Tensor
    per_token_b: torch.Tensor
    ratio: torch.Tensor
    per_token_ratio: torch.Tensor

    @classmethod
    def names(cls) -> list[str]:
        return [field.name for field in fields(cls)]

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.names()}

    def stacked(self) -> torch.Tensor:
        """All quantities in one tensor `[quantities, ...]` (one all-reduce instead of six)."""
        return torch.stack([getattr(self, name) for name in self.names()])

    @classmethod
    def from_stacked(cls, stacked: torch.Tensor) -> SpanStats:
        return cls(*stacked.unbind(0))

    def named(self, span_names: tuple[str, str]) -> dict[str, torch.Tensor]:
        """Quantities keyed with the spans' names, e.g. `mass_image`, `per_token_text`, `ratio`."""
        name_a, name_b = span_names
        renamed = {"_a": f"_{name_a}", "_b": f"_{name_b}"}
        return {_rename_suffix(name, renamed): value for name, value in self.as_dict().items()}


def _rename_suffix(name: str, renamed: dict[str, str]) -> str:
    for suffix, replacement in renamed.items():
        if name.endswith(suffix):
            return name[: -len(suffix)] + replacement
    return name


def summarize_spans(
    per_query_a: torch.Tensor,
    per_query_b: torch.Tensor,
    query_mask: torch.Tensor,
    mask_a: torch.Tensor,
    mask_b: torch.Tensor,
) -> SpanStats:
    """Reduce per-query span values `[..., L, H, Q]` over the query set into `SpanStats` `[..., L, H]`.

    `query_mask` is `[..., Q]`, `mask_a`/`mask_b` `[..., K]`. Queries outside the set are excluded with
    `where` rather than multiplied by zero: a fully masked (padding) query row may hold NaN.
    """
    queries = query_mask[..., None, None, :]
    query_count = queries.sum(-1).to(per_query_a.dtype)
    mass_a = torch.where(queries, per_query_a, 0.0).sum(-1) / query_count
    mass_b = torch.where(queries, per_query_b, 0.0).sum(-1) / query_count
    length_a = mask_a.sum(-1).to(mass_a.dtype)[..., None, None]
    length_b = mask_b.sum(-1).to(mass_b.dtype)[..., None, None]
    per_token_a, per_token_b = mass_a / length_a, mass_b / length_b
    return SpanStats(
        mass_a=mass_a,
        mass_b=mass_b,
        per_token_a=per_token_a,
        per_token_b=per_token_b,
        ratio=mass_a / (mass_a + mass_b),
        per_token_ratio=per_token_a / (per_token_a + per_token_b),
    )


def query_head_groups(num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """The key/value head each query head reads under grouped-query attention (consecutive groups)."""
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads cannot share {num_kv_heads} key/value heads evenly")
    return torch.arange(num_heads) // (num_heads // num_kv_heads)


def imbalance_from_probs(
    probs: torch.Tensor,
    query_mask: torch.Tensor,
    mask_a: torch.Tensor,
    mask_b: torch.Tensor,
    mode: str = "weight",
    values: torch.Tensor | None = None,
    out_weight: torch.Tensor | None = None,
) -> SpanStats:
    """Reference statistics of one sequence from attention probabilities `probs` `[L, H, Q, K]`.

    Norm mode also needs the value vectors `values` `[L, KV_heads, K, head_dim]` (W_V x_j, bias included)
    and the output projection `out_weight` `[L, hidden, H * head_dim]` (W_O); query head h reads value
    head `query_head_groups(H, KV_heads)[h]` and writes through columns `h*head_dim:(h+1)*head_dim` of W_O.
    """
    _check_mode(mode)
    span_a = torch.where(mask_a, probs, 0.0)
    span_b = torch.where(mask_b, probs, 0.0)
    if mode == "weight":
        per_query_a, per_query_b = span_a.sum(-1), span_b.sum(-1)
    else:
        if values is None or out_weight is None:
            raise ValueError("mode='norm' needs `values` and `out_weight`")
        num_heads, head_dim = probs.shape[1], values.shape[-1]
        head_values = values[:, query_head_groups(num_heads, values.shape[1])]
        head_out = out_weight.reshape(out_weight.shape[0], out_weight.shape[1], num_heads, head_dim)

        def flow(span_probs):
            mixed = torch.einsum("lhqk,lhkd->lhqd", span_probs, head_values)
            return torch.einsum("lhqd,lehd->lhqe", mixed, head_out).norm(dim=-1)

        per_query_a, per_query_b = flow(span_a), flow(span_b)
    return summarize_spans(per_query_a, per_query_b, query_mask, mask_a, mask_b)


@dataclass
class Measurement:
    """Statistics of a batch: `per_sequence` is `SpanStats` `[B, len(layers), H]`.

    `valid[b]` says whether sequence b counts: a non-empty query set that can see both (non-empty) spans.
    Values of invalid sequences are NaN.
    """

    layers: list[int]
    valid: torch.Tensor
    per_sequence: SpanStats

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(sums over valid sequences [quantities, L, H], valid count)`: what ranks all-reduce."""
        stacked = self.per_sequence.stacked()
        keep = self.valid[None, :, None, None]
        return torch.where(keep, stacked, 0.0).sum(1), self.valid.sum().to(stacked.dtype)

    def mean(self) -> SpanStats:
        """Mean over valid sequences, `[L, H]` per quantity."""
        sums, count = self.totals()
        return SpanStats.from_stacked(sums / count)


@torch.no_grad()
def measure(
    model,
    inputs: dict,
    query_mask: torch.Tensor,
    mask_a: torch.Tensor,
    mask_b: torch.Tensor,
    layers: list[int] | None = None,
    mode: str = "weight",
) -> Measurement:
    """Measure span attention of the language model on one batch without switching it to eager.

    `inputs` are the model's forward kwargs (extra keys such as `labels` are dropped so no loss is
    computed); the masks are `[B, T]` booleans over token positions. `layers` defaults to all language
    layers. The probe runs in eval mode (no dropout) and restores the training mode and the attention
    implementation afterwards; the model's outputs are those of its usual sdpa attention.
    """
    _check_mode(mode)
    recorder = _SpanRecorder(query_mask, mask_a, mask_b, set(layers) if layers is not None else None, mode)
    model_inputs = {key: value for key, value in inputs.items() if key not in ("labels", "branch")}
    was_training = model.training
    model.eval()
    try:
        with _language_attention(model, recorder):
            model(**model_inputs, use_cache=False)
    finally:
        model.train(was_training)
    measured = sorted(recorder.per_query)
    if layers is not None and measured != sorted(set(layers)):
        raise ValueError(f"layers {sorted(set(layers))} requested but the language model has only {measured}")
    # [B, L, H, Q, 2] -> one [B, L, H, Q] tensor per span
    per_query = torch.stack([recorder.per_query[layer] for layer in measured], dim=1)
    masks = [m.to(per_query.device) for m in (query_mask, mask_a, mask_b)]
    stats = summarize_spans(per_query[..., 0], per_query[..., 1], *masks)
    valid = masks[0].any(-1) & masks[1].any(-1) & masks[2].any(-1) & _sees_both_spans(*masks)
    nan = torch.tensor(float("nan"), device=per_query.device)
    per_sequence = SpanStats.from_stacked(torch.where(valid[None, :, None, None], stats.stacked(), nan))
    return Measurement(layers=measured, valid=valid, per_sequence=per_sequence)


def _sees_both_spans(query_mask, mask_a, mask_b) -> torch.Tensor:
    """Causal attention: every query must come after at least one token of each span."""
    positions = torch.arange(query_mask.shape[-1], device=query_mask.device)
    first_query = torch.where(query_mask, positions, query_mask.shape[-1]).amin(-1)
    first_a = torch.where(mask_a, positions, query_mask.shape[-1]).amin(-1)
    first_b = torch.where(mask_b, positions, query_mask.shape[-1]).amin(-1)
    return (first_a < first_query) & (first_b < first_query)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


class _SpanRecorder:
    """The attention function the language model runs during `measure` (see the module docstring)."""

    def __init__(self, query_mask, mask_a, mask_b, layers: set[int] | None, mode: str):
        self.query_mask = query_mask
        self.spans = torch.stack([mask_a, mask_b], dim=-1)  # [B, T, 2]
        self.layers = layers
        self.mode = mode
        self.per_query: dict[int, torch.Tensor] = {}  # layer -> [B, H, Q, 2]

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        output = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if self.layers is None or module.layer_idx in self.layers:
            self.per_query[module.layer_idx] = self._span_values(module, query, key, value, attention_mask, kwargs)
        return output

    def _span_values(self, module, query, key, value, attention_mask, kwargs) -> torch.Tensor:
        # float32 so that a bf16 model still yields masses accurate well beyond the third digit.
        spans = self.spans.to(device=key.device, dtype=torch.float32)[:, None]  # [B, 1, T, 2]
        if self.mode == "weight":
            span_values = spans.expand(-1, key.shape[1], -1, -1)
        else:
            # [B, KV, T, 2 * D]: the value vectors of span a, then those of span b, zero elsewhere.
            span_values = torch.cat([value.float() * spans[..., :1], value.float() * spans[..., 1:]], dim=-1)
        kwargs = {**kwargs, "dropout": 0.0}
        mixed, _ = sdpa_attention_forward(module, query.float(), key.float(), span_values, attention_mask, **kwargs)
        if self.mode == "weight":
            return mixed.transpose(1, 2)  # [B, Q, H, 2] -> [B, H, Q, 2]
        batch, length, heads, _ = mixed.shape
        query_mask = self.query_mask.to(mixed.device)
        return _head_output_norms(module.o_proj, mixed.reshape(batch, length, heads, 2, -1), query_mask, value.dtype)


def _head_output_norms(out_proj, mixed: torch.Tensor, query_mask: torch.Tensor, dtype) -> torch.Tensor:
    """Norms `[B, H, Q, 2]` of each head's output contribution `W_O^h · mixed_h`, at the query positions only.

    One `out_proj` call on block-diagonal inputs (head h's vector in block h, zeros elsewhere) yields every
    head's contribution separately through the real module, so a LoRA-wrapped or ZeRO-3-partitioned
    projection works as in the forward; a trailing zero row is subtracted to remove a bias, if any.
    """
    batch, length, heads, spans, head_dim = mixed.shape
    selected = mixed[query_mask]  # [N, H, 2, D]
    eye = torch.eye(heads, dtype=selected.dtype, device=selected.device)
    blocks = torch.einsum("nhsd,hg->nshgd", selected, eye).reshape(-1, heads * head_dim)
    blocks = torch.cat([blocks, blocks.new_zeros(1, heads * head_dim)])
    projected = out_proj(blocks.to(dtype)).float()
    contributions = (projected[:-1] - projected[-1]).reshape(-1, spans, heads, projected.shape[-1])
    norms = torch.zeros(batch, length, heads, spans, device=mixed.device)
    norms[query_mask] = contributions.norm(dim=-1).transpose(1, 2)
    return norms.transpose(1, 2)


@contextmanager
def _language_attention(model, recorder: _SpanRecorder):
    """Route the language model's attention through `recorder`; every other sub-model keeps its own."""
    AttentionInterface.register(_PROBE_ATTENTION, recorder)
    # Masks are built per implementation name; unknown names get no mask at all, so the probe reuses sdpa's.
    AttentionMaskInterface.register(_PROBE_ATTENTION, sdpa_mask)
    text_config = model.config.get_text_config()
    original = text_config._attn_implementation
    model.set_attn_implementation(_text_only(model.config, text_config, _PROBE_ATTENTION))
    try:
        yield
    finally:
        model.set_attn_implementation(_text_only(model.config, text_config, original))
        # Drop the reference to the recorder (and its masks); the name stays registered as plain sdpa.
        AttentionInterface.register(_PROBE_ATTENTION, sdpa_attention_forward)


def _text_only(model_config, text_config, implementation: str):
    if model_config is text_config:
        return implementation
    for name in model_config.sub_configs:
        if getattr(model_config, name, None) is text_config:
            return {name: implementation}
    raise ValueError(f"cannot find the language-model sub-config of {type(model_config).__name__}")

