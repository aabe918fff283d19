"""xmodal-data: build instances with the same Hydra config as training and write them out for inspection.

`xmodal-data data=pgps9k data.root=DIR builder=paired out=F.jsonl` writes one JSON line per instance
(a paired instance's teacher view as a second line with the same `pair_id`), the images copied into
`F_images/` beside it, and a summary (counts per condition and source, skipped and dropped records and why)
to `F.jsonl.summary.json` and stdout.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig

from xmodal.core.atomic import atomic_file
from xmodal.core.errors import ConfigError
from xmodal.recipes import CONFIG_DIR, instances_of
from xmodal.conf.schema import check_schema
from xmodal.core.console import hydra_console_script


def instance_lines(instance: dict) -> list[dict]:
    """One line per view: an instance with a `teacher` view becomes two lines sharing `pair_id`.

    Views of one record built as separate instances (paired emit=mix, curriculum) carry the same `pair_id`.
    """
    line = {key: value for key, value in instance.items() if key != "teacher"}
    teacher = instance.get("teacher")
    pair_id = instance["meta"].get("pair_id", instance["id"] if teacher else None)
    if pair_id is not None:
        line["pair_id"] = pair_id
    if teacher is None:
        return [line]
    teacher_line = {
        **line,
        "id": f"{pair_id}:{teacher['condition']}",
        "condition": teacher["condition"],
        "messages": teacher["messages"],
        "images": teacher["images"],
    }
    return [line, teacher_line]


def copy_images(lines: list[dict], folder: Path) -> int:
    """Copy every referenced image into `folder` once (named by a hash of its origin) and point the lines at it."""
    copies: dict[str, str] = {}
    for line in lines:
        for index, path in enumerate(line["images"]):
            if path not in copies:
                name = f"{hashlib.sha1(path.encode()).hexdigest()[:12]}_{Path(path).name}"
                target = folder / name
                if not target.exists():
                    with open(path, "rb") as original, atomic_file(target, "wb") as copy:
                        shutil.copyfileobj(original, copy)
                copies[path] = str(target)
        line["images"] = [copies[path] for path in line["images"]]
    return len(copies)


def write_build(cfg: DictConfig, out: str) -> dict:
    """Build, write the JSONL and its images, write and return the summary."""
    if cfg.data.get("streaming"):
        raise ConfigError("data.streaming=true: xmodal-data writes the whole build; set data.streaming=false")
    built = instances_of(cfg)
    source, builder, instances = built.source, built.builder, built.instances
    out_path = Path(out).expanduser().resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lines = [line for instance in instances for line in instance_lines(instance)]
    image_count = copy_images(lines, out_path.with_name(out_path.stem + "_images"))
    with atomic_file(out_path, encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    summary = {
        "out": str(out_path),
        "records": len(source.records()),
        "instances": len(instances),
        "lines": len(lines),
        "images": image_count,
        "ordered": bool(builder.ordered),
        "conditions": dict(sorted(Counter(line["condition"] for line in lines).items())),
        "sources": dict(sorted(Counter(instance["source"] for instance in instances).items())),
        "skipped_records": dict(source.skipped),
        "dropped_by_builder": dict(builder.dropped),
    }
    Path(f"{out_path}.summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def build_and_report(cfg: DictConfig) -> None:
    out = cfg.get("out")
    if not out:
        raise ConfigError("out: say where to write the instances, e.g. out=instances.jsonl")
    print(json.dumps(write_build(cfg, out), indent=2))


main = hydra_console_script("xmodal-data", build_and_report, CONFIG_DIR, "config", check=check_schema)


if __name__ == "__main__":
    main()
