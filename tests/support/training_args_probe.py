"""Build the TrainingArguments of every `deepspeed=` option named on the command line; print one JSON line each.

Run in a process of its own (test_configs.py does): a DeepSpeed config makes the TrainingArguments configure
accelerate's process-wide state and start a one-process gloo group, as `xmodal-train` does before the model.
Usage: python -m tests.support.training_args_probe <output dir> <option> [<option> ...]
"""

from __future__ import annotations

import json
import sys

from xmodal.trainers.lifecycle.runs import build_training_args
from tests.support.helpers import compose_config
from xmodal.core import distributed


def main(output_dir: str, options: list[str]) -> None:
    distributed.ensure_launcher_environment()
    distributed.init_deepspeed_backend()
    for option in options:
        cfg = compose_config(
            [
                f"deepspeed={option}",
                f"output_dir={output_dir}",
                "trainer.per_device_train_batch_size=3",
                "trainer.gradient_accumulation_steps=2",
            ]
        )
        args = build_training_args(cfg.trainer, cfg.deepspeed)
        resolved = args.hf_deepspeed_config.config if args.deepspeed else None
        print(json.dumps({"option": option, "world_size": args.world_size, "deepspeed": resolved}))
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
