"""Text-centric and vision-centric views of one record (paper 2), shared by the paired and curriculum builders.

Both views show the record's images and ask `meta.question` with the same target; only the text-centric
view also states `meta.facts` in the prompt. A source that words its views itself (PGPS9K's `prompt_style=paper`)
gives the two prompts in `meta.centric_prompts`, used as they are.
"""

from __future__ import annotations

from xmodal.core.errors import DataError
from ..sample import image_part, make_sample, message, text_part

DEFAULT_FACTS_TEMPLATE = "Facts:\n{facts}\n"
# Record meta that states the facts stays out of instance meta: only the text-centric prompt reveals them.
FACT_BEARING_META = ("facts", "structural_clauses", "semantic_clauses", "centric_prompts", "cells", "conflict_qa")


def centric_view(sample: dict, condition: str, facts_template: str, fact_separator: str) -> dict:
    """`{"condition", "messages", "images"}` for `condition` in (text_centric, vision_centric)."""
    meta = sample.get("meta", {})
    for field in ("question", "facts"):
        if field not in meta:
            raise DataError(
                sample["source"], sample["id"], f"meta.{field}",
                "the paired builders need sources that state the question and the facts (e.g. pgps9k, synthetic)",
                "no question/facts",
            )
    if not sample["images"]:
        raise DataError(sample["source"], sample["id"], "images", "a centric view needs the record's image", "no image")
    if "centric_prompts" in meta:
        prompt = meta["centric_prompts"][condition]
    elif condition == "text_centric":
        prompt = facts_template.format(facts=fact_separator.join(meta["facts"])) + meta["question"]
    else:
        prompt = meta["question"]
    parts = [image_part() for _ in sample["images"]] + [text_part(prompt)]
    messages = [message("user", parts), message("assistant", [text_part(sample["target"])])]
    return {"condition": condition, "messages": messages, "images": list(sample["images"])}


def view_instance(sample: dict, view: dict, suffix: str = "") -> dict:
    """An instance of one view; `meta.pair_id` (the record id) ties the views of a record together."""
    meta = {key: value for key, value in sample["meta"].items() if key not in FACT_BEARING_META}
    meta.update(pair_id=sample["id"], num_facts=len(sample["meta"]["facts"]))
    instance_id = f"{sample['id']}:{view['condition']}{suffix}"
    return make_sample(instance_id, sample["source"], view["messages"], view["images"], view["condition"], meta)
