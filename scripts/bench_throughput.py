"""Training throughput and model FLOPs utilisation (MFU) of xmodal fine-tunes, one variant after another.

Builds a Qwen2-VL-shaped model from its config with random weights (`--preset 2b`: the Qwen2-VL-2B shapes, a
151,936-token vocabulary; `--preset tiny` for a CPU check), then trains each variant through the recipe's own
pieces (`xmodal.recipes.finetune`: TrainingArguments, the tokenized paired synthetic data, `apply_finetuning`,
`XModalSFTTrainer` with its loss terms and metric callbacks) for `--steps` optimizer steps:

    finetune   full (vision tower frozen, the default) | lora
    loss       lm | lm_kl (LM + token-level KL alignment on the paired views, the released recipe)
    metrics    none | imbalance (the attention-imbalance probe every `--probe-every` steps)

Every variant trains on the same paired batches (vision-centric + text-centric rows); tokens/s counts their
non-padding tokens (the Trainer's `num_input_tokens_seen`) over its `train_runtime`. MFU = model FLOPs/s over
the GPU's dense bf16 peak, with model FLOPs per token = 2 N (forward) + 2 N (activation gradients) + 2 N_trainable
(weight gradients), N counting the language model and projector (attention scores and the vision tower's
patches are left out, so the figure is a slight underestimate). Knobs: `--activation-checkpointing`,
`--max-pixels` (image resolution cap), `--attn auto` (flash_attention_2 where installed).

    python scripts/bench_throughput.py --preset 2b --dtype bfloat16 --json docs/throughput.json      # on a GPU
    python scripts/bench_throughput.py --preset tiny --dtype float32 --steps 2 --finetune full       # CPU check
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import tempfile

import torch
from omegaconf import OmegaConf

from bench_alignment import compose_config
from xmodal.core.atomic import atomic_write_text
from xmodal.data_builders.collate import MultimodalCollator
from xmodal.losses import build_loss
from xmodal.recipes.finetune import build_train_dataset
from xmodal.trainers.lifecycle.runs import build_training_args, metric_callbacks
from xmodal.trainers.models.finetuning import FinetuneSettings, apply_finetuning
from xmodal.trainers.models import set_image_pixels
from xmodal.trainers.models.loading import attention_implementation
from xmodal.trainers.models.tiny import build_tiny_qwen2_vl
from xmodal.trainers.sft import XModalSFTTrainer

PRESETS = {
    # Qwen2-VL-2B: LM 1536 x 28 layers (12 heads, 2 KV heads), ViT 1280 x 32 blocks, patch 14, 2x2 merge.
    "2b": dict(
        text=dict(hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
                  max_position_embeddings=32768),
        vision=dict(image_size=448, patch_size=14, spatial_merge_size=2, hidden_size=1280, intermediate_size=5120,
                    num_layers=32, num_heads=16),
        vocab=151_936,
    ),
    "tiny": dict(
        text=dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2),
        vision=dict(image_size=64, patch_size=8, spatial_merge_size=2, hidden_size=32, intermediate_size=64,
                    num_layers=1, num_heads=2),
        vocab=4096,
    ),
}
# Dense bf16 peak TFLOP/s by device-name fragment (vendor datasheets); --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100": 989.4,
                    "A100": 312.0, "L40S": 362.1, "A10G": 70.0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="2b")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--finetune", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--losses", nargs="+", default=["lm", "lm_kl"], help="conf/loss configs")
    parser.add_argument("--metrics", nargs="+", default=["none", "imbalance"], choices=["none", "imbalance"])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per variant")
    parser.add_argument("--batch", type=int, default=4, help="pairs per device batch (2x rows)")
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=None, help="synthetic image side (default: the preset's)")
    parser.add_argument("--max-pixels", type=int, default=None, help="model.max_pixels: cap on pixels per image")
    parser.add_argument("--activation-checkpointing", nargs="*", default=[], help="vision_tower language_model")
    parser.add_argument("--attn", default="auto", help="attn_implementation (auto: flash_attention_2 if installed)")
    parser.add_argument("--probe-every", type=int, default=10, help="imbalance probe every N steps")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak (default: table)")
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser.parse_args()


def build_model(args):
    preset = PRESETS[args.preset]
    torch.manual_seed(0)
    model, processor = build_tiny_qwen2_vl(
        text=preset["text"], vision=preset["vision"], dtype=args.dtype, attn_implementation=attention_implementation(args.attn)
    )
    model.resize_token_embeddings(preset["vocab"], mean_resizing=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), set_image_pixels(processor, max_pixels=args.max_pixels)


def peak_flops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((tflops * 1e12 for fragment, tflops in PEAK_BF16_TFLOPS.items() if fragment in name), None)


def flops_per_token(model) -> float:
    lm = [p for name, p in model.named_parameters() if ".visual.blocks." not in name and "patch_embed" not in name]
    return 4 * sum(p.numel() for p in lm) + 2 * sum(p.numel() for p in lm if p.requires_grad)


def run_variant(base_model, processor, args, finetune: str, loss: str, metrics: str, workdir: str) -> dict:
    image_size = args.image_size or PRESETS[args.preset]["vision"]["image_size"]
    overrides = [
        "model=tiny_qwen2_vl", "builder=paired", "data=synthetic", f"data.num_records={args.records}",
        f"data.image_size={image_size}", f"loss={loss}", f"finetune={finetune}", f"metrics={metrics}",
        f"finetune.activation_checkpointing=[{','.join(args.activation_checkpointing)}]",
        f"trainer.max_steps={args.steps}", f"trainer.per_device_train_batch_size={args.batch}",
        f"trainer.bf16={args.dtype == 'bfloat16'}", "trainer.save_strategy=no", f"trainer.logging_steps={args.steps}",
        "+trainer.include_num_input_tokens_seen=non_padding", "encoding.max_length=8192",
        f"output_dir={workdir}/{finetune}-{loss}-{metrics}", f"cache_dir={workdir}/cache",
    ]
    if metrics == "imbalance":
        overrides.append(f"metrics.imbalance.every_n_steps={args.probe_every}")
    cfg = compose_config(overrides)
    training_args = build_training_args(cfg.trainer, cfg.deepspeed)
    dataset, _ = build_train_dataset(cfg, processor)
    settings = FinetuneSettings(**OmegaConf.to_container(cfg.finetune, resolve=True))
    model = apply_finetuning(copy.deepcopy(base_model), settings)
    callbacks = metric_callbacks(cfg.metrics)
    trainer = XModalSFTTrainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=MultimodalCollator(processor),
        processing_class=processor, callbacks=callbacks, loss_composer=build_loss(cfg.loss),
    )
    for callback in callbacks:
        callback.bind(trainer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    runtime = trainer.train().metrics["train_runtime"]
    tokens_per_s = trainer.state.num_input_tokens_seen / runtime
    result = {
        "finetune": finetune, "loss": loss, "metrics": metrics, "tokens_per_s": tokens_per_s,
        "samples_per_s": args.steps * args.batch * 2 / runtime, "model_tflops_per_s": tokens_per_s * flops_per_token(model) / 1e12,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def main() -> None:
    args = parse_args()
    base_model, processor = build_model(args)
    os.environ.setdefault("WANDB_MODE", "disabled")
    peak = peak_flops(args)
    results = []
    with tempfile.TemporaryDirectory(prefix="xmodal-bench-throughput-") as workdir:
        for finetune, loss, metrics in itertools.product(args.finetune, args.losses, args.metrics):
            result = run_variant(base_model, processor, args, finetune, loss, metrics, workdir)
            result["mfu"] = result["model_tflops_per_s"] * 1e12 / peak if peak else None
            results.append(result)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    parameters = sum(p.numel() for p in base_model.parameters())
    setup = {"device": device, "preset": args.preset, "parameters": parameters, "dtype": args.dtype,
             "attn": attention_implementation(args.attn), "pairs_per_batch": args.batch, "steps": args.steps,
             "activation_checkpointing": args.activation_checkpointing, "max_pixels": args.max_pixels,
             "torch": torch.__version__}
    print(" ".join(f"{key}={value}" for key, value in setup.items()))
    print(f"{'finetune':<9}{'loss':<8}{'metrics':<11}{'tokens/s':>10}{'samples/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'peak GB':>9}")
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        memory = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] is not None else "n/a"
        print(f"{r['finetune']:<9}{r['loss']:<8}{r['metrics']:<11}{r['tokens_per_s']:>10.0f}{r['samples_per_s']:>11.2f}"
              f"{r['model_tflops_per_s']:>9.2f}{mfu:>7}{memory:>9}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"setup": setup, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
