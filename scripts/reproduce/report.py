"""The report: one Markdown table per paper, the pre-registered verdicts (each paper's `preregistration`) read off the
hierarchical intervals, and the README's generated section, all from results.json and the archived runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xmodal.core.atomic import atomic_write_text

from .papers import EVAL_DATA_SEED, MODAL_IMBALANCE, MODALITY_GAP, PAPERS, PER_SEED_COLUMNS, Paper
from .statistics import COMPETENCE, paired_summary, summary_of

README_START, README_END = "<!-- reproduce:start -->", "<!-- reproduce:end -->"


@dataclass(frozen=True)
class Verdict:
    """One pre-registered claim: `metric` of `minuend` (less that of `subtrahend`, same seeds and records, where
    given) lies on the `direction` side of 0 by at least `threshold`, and its 95 % hierarchical interval excludes 0."""

    key: str  # the label in its paper's pre-registration
    paper: Paper
    claim: str
    minuend: str  # a recipe
    metric: str
    direction: int = 1  # +1: the number must be positive; -1: negative
    threshold: float = 0.0
    subtrahend: str | None = None  # a recipe: the claim is about a paired difference
    views: bool = False  # also state each view's accuracy change, subtrahend less minuend (paper 2's "narrows")
    beside: tuple[str, ...] = ()  # metrics of `minuend` stated beside the verdict


GAP_RECIPES = (("mix", "full_text"), ("curriculum", "full_text"), ("kl", "full_text"), ("kl_curriculum", "full_text"),
               ("rl_kl", "rl_full_text"))
HIT_RECIPES = ("hit", "hit_contexts_first")
VERDICTS = (
    Verdict("P2-1", MODALITY_GAP, "training on text-centric prompts only leaves a modality gap (text - vision accuracy)",
            "full_text", "modality_gap", threshold=0.05),
    Verdict("P2-2", MODALITY_GAP, "the text-centric recipe amplifies the gap over training (in-training held-out gap, "
            "last evaluation less first)", "full_text", "curve_change/modality_gap", threshold=0.05,
            beside=("curve_change/text_centric", "curve_change/vision_centric")),
    *(Verdict(f"P2-{3 + n}", MODALITY_GAP, f"`{recipe}` narrows the gap of `{baseline}` (size of `{baseline}`'s gap "
              f"less `{recipe}`'s)", baseline, "modality_gap_size", threshold=0.05, subtrahend=recipe, views=True)
      for n, (recipe, baseline) in enumerate(GAP_RECIPES)),
    Verdict("P1-1", MODAL_IMBALANCE, "conflicts are told from agreement less well across modalities than within one "
            "(unimodal - cross-modal discrimination, `it`)", "it", "discrimination_gap", threshold=0.1),
    Verdict("P1-2", MODAL_IMBALANCE, "attention on cross-modal conflicts is imbalanced under `it` (per-token image "
            "share's distance from 0.5)", "it", "imbalance_distance/per_token/cross_modal", threshold=0.02),
    *(verdict for n, recipe in enumerate(HIT_RECIPES) for verdict in (
        Verdict(f"P1-{3 + 4 * n}", MODAL_IMBALANCE, f"`{recipe}` reduces the imbalance of `it` (per-token share's "
                f"distance from 0.5, `it`'s less `{recipe}`'s)", "it", "imbalance_distance/per_token/cross_modal",
                threshold=0.02, subtrahend=recipe),
        Verdict(f"P1-{4 + 4 * n}", MODAL_IMBALANCE, f"`{recipe}` reduces the imbalance of `it` in norm mode",
                "it", "imbalance_distance/norm/cross_modal", threshold=0.02, subtrahend=recipe),
        Verdict(f"P1-{5 + 4 * n}", MODAL_IMBALANCE, f"`{recipe}` tells cross-modal conflicts apart better than `it` "
                "(cross-modal discrimination difference)", recipe, "discrimination/cross_modal", threshold=0.05,
                subtrahend="it"),
        Verdict(f"P1-{6 + 4 * n}", MODAL_IMBALANCE, f"`{recipe}` answers the downstream proxy better than `it` "
                "(held-out QA with cross-modal distractors and two-fact questions)", recipe, "proxy/accuracy",
                threshold=0.05, subtrahend="it"),
    )),
)


def format_value(summary: dict | None, per_seed: bool = False) -> str:
    """Mean [interval]; `per_seed`: each seed's value, for a number chosen per seed (a step), not measured."""
    if not summary:
        return "-"
    if per_seed:
        return ", ".join(f"{value:g}" for _, value in sorted(summary["per_seed"].items(), key=lambda kv: int(kv[0])))
    if summary["ci95"] is None:
        return f"{summary['mean']:.3f} (n={summary['n']})"
    low, high = summary["ci95"]
    return f"{summary['mean']:.3f} [{low:.3f}, {high:.3f}]"


def markdown_table(paper: Paper, results: dict) -> str:
    """The paper's tables, one row per recipe: mean over seeds [95 % hierarchical interval] of each column."""
    tables = []
    extras = {recipe.name for recipe in paper.recipes if not recipe.default}
    for caption, columns in paper.tables:
        header = ["recipe", "seeds", *(title for _, title in columns)]
        rows = [header, ["---"] * len(header)]
        for recipe, entry in results["papers"][paper.key]["recipes"].items():
            summary = entry["summary"]
            if entry["seeds"] and columns[0][0] not in summary:
                continue  # a table of some recipes' metrics (the RL runs', by their first column): not the others
            if not entry["seeds"] and recipe in extras:
                continue  # an extra recipe, run only when named: no row until it has run
            rows.append([recipe, str(len(entry["seeds"])),
                         *(format_value(summary.get(metric), metric in PER_SEED_COLUMNS) for metric, _ in columns)])
        table = "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"
        tables.append(f"{caption}\n\n{table}" if caption else table)
    return "\n".join(tables)


def verdict_summary(verdict: Verdict, loaded: dict, resamples: int) -> dict | None:
    runs = loaded[(verdict.paper.key, verdict.minuend)]
    if verdict.subtrahend is None:
        return summary_of(verdict.paper, runs, verdict.metric, resamples)
    return paired_summary(verdict.paper, runs, loaded[(verdict.paper.key, verdict.subtrahend)], verdict.metric,
                          resamples)


def outcome(verdict: Verdict, summary: dict | None, min_seeds: int) -> str:
    if not summary or summary["ci95"] is None or summary["n"] < min_seeds:
        return f"not decided (fewer than {min_seeds} seeds with this number)"
    low, high = (verdict.direction * bound for bound in summary["ci95"])
    estimate = verdict.direction * summary["mean"]
    if min(low, high) > 0 and estimate >= verdict.threshold:
        return "appears"
    if max(low, high) < 0:
        return "is reversed"
    if min(low, high) > 0:
        return f"does not appear (the interval excludes 0 but the estimate is below the threshold {verdict.threshold})"
    return "does not appear (the interval contains 0)"


def view_changes(verdict: Verdict, loaded: dict, resamples: int) -> str:
    """Each view's held-out accuracy change (the narrowing recipe, `subtrahend`, less the one whose gap it narrows,
    `minuend`), and what closed the gap."""
    changes = {view: paired_summary(verdict.paper, loaded[(verdict.paper.key, verdict.subtrahend)],
                                    loaded[(verdict.paper.key, verdict.minuend)], view, resamples)
               for view in ("text_centric", "vision_centric")}
    if None in changes.values() or any(c["ci95"] is None for c in changes.values()):
        return ""
    text, vision = changes["text_centric"], changes["vision_centric"]
    described = (f" Accuracy change, `{verdict.subtrahend}` less `{verdict.minuend}`: text-centric {text['mean']:+.3f} "
                 f"[{text['ci95'][0]:+.3f}, {text['ci95'][1]:+.3f}], vision-centric {vision['mean']:+.3f} "
                 f"[{vision['ci95'][0]:+.3f}, {vision['ci95'][1]:+.3f}]")
    if text["ci95"][1] < 0 and not vision["ci95"][0] > 0:
        return described + ": the gap closes by LOSING text-centric accuracy, not by gaining vision-centric accuracy."
    if vision["ci95"][0] > 0:
        return described + ": vision-centric accuracy rises."
    return described + "."


def verdicts(loaded: dict, resamples: int, min_seeds: int) -> list[str]:
    """Every pre-registered verdict, whatever the outcome (never chosen after the numbers)."""
    lines = []
    for verdict in VERDICTS:
        summary = verdict_summary(verdict, loaded, resamples)
        paired = f" (paired: same seeds and held-out records)" if verdict.subtrahend else ""
        numbers = ""
        if summary:
            interval = "no interval" if summary["ci95"] is None else \
                f"95 % interval [{summary['ci95'][0]:+.3f}, {summary['ci95'][1]:+.3f}]"
            numbers = f"{summary['mean']:+.3f}, {interval}, positive in {summary['positive']} of {summary['n']} seeds; "
        line = (f"- **{verdict.key}** ({verdict.paper.key}) {verdict.claim}{paired}: {numbers}"
                f"{outcome(verdict, summary, min_seeds)}.")
        if verdict.views and summary:
            line += view_changes(verdict, loaded, resamples)
        for metric in verdict.beside:
            other = summary_of(verdict.paper, loaded[(verdict.paper.key, verdict.minuend)], metric, resamples)
            line += f" Beside it, `{metric}`: {format_value(other)}."
        lines.append(line)
    for recipe in ("it", *HIT_RECIPES):  # the pre-registered fairness criterion of paper 1's arms
        competent = summary_of(MODAL_IMBALANCE, loaded[(MODAL_IMBALANCE.key, recipe)], "competent", resamples)
        reached = "not measured" if not competent else \
            f"reached in {round(competent['mean'] * competent['n'])} of {competent['n']} seeds"
        lines.append(f"- Unimodal competence of `{recipe}` (held-out control accuracy >= {COMPETENCE} in both unimodal "
                     f"conditions at the last in-training evaluation): {reached}.")
    return lines


def short_title(paper: Paper) -> str:
    """"Paper 2" of "Paper 2, the text-vision modality gap (...)"."""
    return paper.title.split(",")[0]


def readme_section(results: dict, verdict_lines: list[str]) -> str:
    """The README's reproduction section body, from results.json and the verdicts."""
    run = results["run"]
    lines = [
        README_START,
        f"Generated by `{run['command']}` from `{run['results_file']}` (runs trained at commit "
        f"`{run['training_commit']}`, report written at `{run['commit']}`; {run['finished_runs']} of "
        f"{run['planned_runs']} runs finished, seeds {', '.join(map(str, run['seeds']))}; {run['settings_note']}). "
        "Wall-clock time from a paper's first start to its last end, "
        f"{run['jobs']} at a time on {run['cpus']} CPU cores: "
        + "; ".join(f"{short_title(paper)} {run['span_minutes'][paper.key]:.0f} min" for paper in PAPERS) + ".",
        "",
        f"Cells: mean over seeds [95 % hierarchical bootstrap interval: seeds, then held-out records within each seed; "
        f"{run['budget']['bootstrap_resamples']} resamples]. Held-out records (`data.seed={EVAL_DATA_SEED}`), "
        f"{run['eval_per_condition']} items per condition and seed, less those sharing content with a training record "
        f"of the run ({run['overlapping_records']} of {run['held_out_records']} left out over all runs).",
        "",
    ]
    for paper in PAPERS:
        lines += [f"**{paper.title}**", "", markdown_table(paper, results)]
    where = "; ".join(f"{short_title(paper)} in `{paper.preregistration}`" for paper in PAPERS)
    lines += [f"Verdicts, each as pre-registered before its runs ({where}):", "",
              *verdict_lines, "", README_END]
    return "\n".join(lines)


def update_readme(section: str, readme: Path) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} markers to write between")
    before, rest = text.split(README_START, 1)
    after = rest.split(README_END, 1)[1]
    atomic_write_text(readme, before + section + after)
