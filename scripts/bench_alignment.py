"""Step-time cost of the alignment loss, (LM + alignment) / (LM only), measured in one run.

Two baselines: LM on the same paired batch (B student + B teacher rows), which isolates what the loss adds
(the response-position log-probs, the KL, hidden states, a frozen teacher's forward), and LM on the B
student (vision-centric) rows alone, which is what training without the alignment loss costs; against it
the two branches make ~2x the physical floor (the target is <= 2.0x). Variants run in rotation, one step
each per round; a ratio is the median over rounds of each round's step-time ratio, so load from other
processes on a shared machine, which drifts over seconds, hits both sides of a ratio alike.

    python scripts/bench_alignment.py                          # lm vs lm_kl (k3) on conf/model/tiny_llava.yaml
    python scripts/bench_alignment.py --losses lm_kl lm_full_kl lm_hidden --steps 30
    python scripts/bench_alignment.py --losses lm_kl --override loss.terms.align.teacher=frozen
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from xmodal.data_builders.collate import pad_rows
from xmodal.losses import build_loss
from xmodal.recipes import CONFIG_DIR
from xmodal.trainers.sft import loss_context

BASELINE = "lm"
STUDENT_ONLY = "lm (student rows)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", nargs="+", default=["lm_kl"], help="conf/loss configs to compare with `lm`")
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides for the compared losses")
    parser.add_argument("--model", default="tiny_llava", help="a tiny LLaVA conf/model config (built from its `init`)")
    parser.add_argument("--pairs", type=int, default=8, help="B: the batch holds B student + B teacher rows")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="text tokens of the student prompt")
    parser.add_argument("--facts-tokens", type=int, default=48, help="extra text tokens of the teacher prompt")
    parser.add_argument("--response-tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed rounds (one step per variant each)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def paired_batch(tokenizer, image_token_id: int, image_tokens: int, image_size: int, args) -> dict:
    """B pairs of random prompts sharing a response; teacher prompts are longer (facts as text), right-padded."""
    generator = torch.Generator().manual_seed(0)
    low, high = 10, len(tokenizer) - 10  # plain tokens, clear of the special ones at the ends of the vocab

    def tokens(count):
        return torch.randint(low, high, (count,), generator=generator).tolist()

    responses = [tokens(args.response_tokens) + [tokenizer.eos_token_id] for _ in range(args.pairs)]
    rows, labels = [], []
    for extra in (0, args.facts_tokens):
        for response in responses:
            prompt = [tokenizer.bos_token_id] + [image_token_id] * image_tokens + tokens(args.prompt_tokens + extra)
            rows.append(prompt + response)
            labels.append([-100] * len(prompt) + response)
    return {
        **pad_rows(rows, labels, tokenizer.pad_token_id),
        "pixel_values": torch.randn(len(rows), 3, image_size, image_size, generator=generator),
        "branch": torch.tensor([0] * args.pairs + [1] * args.pairs),
    }


def train_step(model, optimizer, composer, batch, step: int, full_logits: bool = False) -> tuple[float, dict]:
    """One optimizer step as the trainer takes it: one forward (`loss_context`), the composed loss, backward,
    update. Returns (seconds, the logged unweighted terms)."""
    synchronize = torch.cuda.synchronize if batch["input_ids"].is_cuda else (lambda: None)
    synchronize()
    start = time.perf_counter()
    context = loss_context(model, batch, composer, full_logits=full_logits, global_step=step)
    total, logged = composer(context)
    total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize()
    return time.perf_counter() - start, logged


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_cfg = compose_config([f"model={args.model}"]).model
    model, processor = instantiate(model_cfg.init, _convert_="all")
    vision = model_cfg.init.vision
    image_tokens = (vision.image_size // vision.patch_size) ** 2  # the "default" strategy drops CLIP's CLS
    batch = paired_batch(processor.tokenizer, model.config.image_token_id, image_tokens, vision.image_size, args)
    model.to(args.device)
    batch = {key: value.to(args.device) for key, value in batch.items()}
    composers = {BASELINE: build_loss(compose_config([f"loss={BASELINE}"]).loss)}
    for name in args.losses:
        composers[name] = build_loss(compose_config([f"loss={name}", *args.override]).loss)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    # What training without the alignment loss costs: the LM on the B vision-centric rows alone.
    student_batch = {key: value[: args.pairs] for key, value in batch.items() if key != "branch"}
    variants = {name: (composer, batch) for name, composer in composers.items()}
    variants[STUDENT_ONLY] = (composers[BASELINE], student_batch)
    times = {name: [] for name in variants}
    for round_index in range(args.warmup + args.steps):
        names = list(variants)
        rotation = round_index % len(names)  # vary which variant runs first in a round
        for name in names[rotation:] + names[:rotation]:
            composer, variant_batch = variants[name]
            seconds, _ = train_step(model, optimizer, composer, variant_batch, step=round_index)
            if round_index >= args.warmup:
                times[name].append(seconds)

    rows, length = batch["input_ids"].shape
    print(f"model={args.model} device={args.device} rows={rows} (B={args.pairs} pairs) seq_len={length} "
          f"threads={args.threads} rounds={args.steps} overrides={args.override or 'none'}")
    print(f"{'variant':<22}{'median step (ms)':>18}{'vs lm, same rows':>18}{'vs lm, student rows':>21}")
    for name, samples in times.items():
        same_rows = statistics.median(t / base for t, base in zip(samples, times[BASELINE]))
        student_rows = statistics.median(t / base for t, base in zip(samples, times[STUDENT_ONLY]))
        print(f"{name:<22}{statistics.median(samples) * 1e3:>18.1f}{same_rows:>18.3f}{student_rows:>21.3f}")


if __name__ == "__main__":
    main()
