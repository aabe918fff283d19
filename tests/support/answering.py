"""A real model whose greedy answer is known in advance, so that scores can be checked against a hand count.

A random-init tiny model answers every held-out item wrong, so an accuracy computed from it is 0.0 whatever the
scorer does. `always_answer` biases the model's own generation config (transformers' `sequence_bias`) so that greedy
decoding gives `answer` and then the end token: the items whose target is `answer` are right, every other one wrong.
The bias is saved with the model (generation_config.json), so a checkpoint answers the same way when reloaded.
"""

from __future__ import annotations

# Far above any logit of a tiny model: the biased token wins every greedy step it applies to.
BIAS = 1000.0


def always_answer(model, processor, answer: str) -> None:
    """Make `model` (with its `processor`'s tokenizer) answer exactly `answer` under greedy decoding.

    Each prefix of the answer's tokens, and the whole answer followed by the end token, biases its last token by
    BIAS times its length: after k answer tokens the (k+1)-th (or the end token) outbids every shorter match."""
    tokenizer = processor.tokenizer
    tokens = tokenizer.encode(answer, add_special_tokens=False)
    sequence = [*tokens, tokenizer.eos_token_id]
    biases = [[sequence[:length], length * BIAS] for length in range(1, len(sequence) + 1)]
    model.generation_config.sequence_bias = biases
