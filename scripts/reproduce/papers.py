"""What the reproduction runs: the budgets (full and `--quick`), each paper's recipes, tables and curves, and the
run plan (one run per paper x recipe x seed, in dependency order)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

EVAL_DATA_SEED = 7  # the held-out records: the training runs draw theirs with their own seed
CURVE_DATA_SEED = 1000003  # the in-training evaluation's held-out records (metrics=eval's default seed)
CONFLICT_CONDITIONS = ("unimodal_text", "unimodal_image", "cross_modal", "cross_lingual")


@dataclass(frozen=True)
class Budget:
    """How long and how thoroughly: the full run and `--quick` differ only here."""

    seeds: tuple[int, ...]
    gap_records: int  # synthetic training records of each paper-2 run
    gap_steps: int  # training steps of each paper-2 recipe (kl_curriculum's stage 2 included)
    rl_steps: int  # GRPO optimizer steps of each RL recipe (4 per rollout batch), from full_text's model
    mixing_records: int  # records per source of conf/data/conflict_mixture.yaml (a conflict record: 2 instances)
    mixing_epochs: float  # passes over paper 1's instruction pool (matched data: the same for both mixings)
    eval_per_condition: int
    imbalance_per_condition: int
    curve_points: int  # in-training imbalance probes and held-out evaluations per run
    curve_per_condition: int  # held-out items per condition at each in-training evaluation
    logging_steps: int  # metrics.jsonl lines (the loss curves) every this many steps
    bootstrap_resamples: int  # hierarchical bootstrap (seeds, then held-out records) of every interval
    base_stage: dict = field(default_factory=dict)  # model.init.stage overrides (the quick run's tiny base)


# Five seeds: the fewest the pre-registration (results/preregistration.md) accepts for a verdict.
# Paper 1: one pass over 9,000 records per source (results/preregistration-2.md; the first attempt's 15 passes over
# 600 were memorised: results/pilots/).
FULL = Budget(seeds=(0, 1, 2, 3, 4), gap_records=2000, gap_steps=2000, rl_steps=120, mixing_records=9000,
              mixing_epochs=1, eval_per_condition=128, imbalance_per_condition=32, curve_points=10,
              curve_per_condition=32, logging_steps=10, bootstrap_resamples=2000)
QUICK = Budget(  # two seeds: enough for an interval over seeds, and a third less time than three
    seeds=(0, 1), gap_records=64, gap_steps=4, rl_steps=2, mixing_records=16, mixing_epochs=1, eval_per_condition=4,
    imbalance_per_condition=2, curve_points=2, curve_per_condition=2, logging_steps=1, bootstrap_resamples=200,
    base_stage={"train_records": 64, "held_out_records": 16, "classifier_steps": 2, "caption_steps": 2,
                "text_qa_records": 16, "held_out_text_qa_records": 8, "min_classifier_accuracy": 0,
                "min_caption_exact_match": 0, "min_text_qa_accuracy": 0},
)


@dataclass(frozen=True)
class Recipe:
    name: str
    overrides: tuple[str, ...]
    starts_from: str | None = None  # the recipe (same seed) whose model this one fine-tunes: its final/, or
    uncertain_start: bool = False  # its saved step chosen by the pre-registered rule (runner.uncertain_start)
    entry: str = "train"  # train (xmodal-train) | rl (xmodal-rl)
    epoch_scale: float = 1.0  # paper 1: passes over the instruction pool, as a multiple of the budget's
    default: bool = True  # run without --recipes (false: an extra ablation, run by naming it)


@dataclass(frozen=True)
class Paper:
    key: str
    title: str
    recipes: tuple[Recipe, ...]
    evaluate: tuple[str, ...]  # xmodal-eval overrides (builder) on the held-out records
    imbalance: tuple[str, ...]  # xmodal-imbalance overrides
    conditions: tuple[str, ...]  # plotted per recipe
    gap: str  # the headline metric, plotted per recipe
    tables: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (caption, ((metric, column title), ...)) per table
    curves: tuple[tuple[str | tuple[str, str], str], ...]  # (metrics.jsonl key or (key, key subtracted), panel title)
    proxy: tuple[str, ...] = ()  # xmodal-eval overrides of a downstream proxy, evaluated and never trained
    preregistration: str = "results/preregistration.md"  # where its verdicts were stated before its runs


# paper 2's responses carry tokens before the answer (10 of the tiny tokenizer's), every recipe alike, so that the RL
# runs' rollouts have more than the answer token for the alignment term to act on (results/preregistration.md)
SENTENCE = ("data.answer_template='The answer is: the value of {key} is {answer}.'",)
# the RL recipes in the released regime's shape, as pre-registered (results/preregistration.md): responses of up to
# 24 new tokens, 4 optimizer steps per rollout batch, the dual clip, overlong shaping scaled to those 24 tokens,
# and DAPO's refill of filtered groups (capped)
RL_REGIME = ("rl.grpo.max_completion_length=24", "rl.grpo.steps_per_generation=4", "rl.grpo.delta=10",
             "rl.overlong.buffer=8", "rl.overlong.penalty_factor=1.0", "rl.refill.enabled=true")
# table columns chosen per seed by a rule (the RL start step), listed seed by seed: a mean of them describes nothing
PER_SEED_COLUMNS = frozenset({"rl/start_step"})
MODALITY_GAP = Paper(
    key="modality_gap",
    title="Paper 2, the text-vision modality gap (arXiv 2510.22836)",
    recipes=(
        *(Recipe(name, (f"experiment=modality_gap/{name}", *SENTENCE), "kl" if name == "kl_curriculum" else None)
          for name in ("full_text", "no_text", "mix", "curriculum", "kl", "kl_curriculum")),
        # the paper's own regime: GRPO/DAPO from a full_text checkpoint whose vision view is uncertain, not
        # confidently wrong (results/preregistration.md: the first saved step with vision-centric accuracy in
        # [0.3, 0.7], else the closest to 0.5), where the clamped k3 term still has a gradient
        *(Recipe(f"rl_{name}", (f"experiment=modality_gap_rl/{name}", *SENTENCE, *RL_REGIME), "full_text",
                 entry="rl", uncertain_start=True)
          for name in ("full_text", "kl")),
        # not a paper recipe and no verdict: rl_kl without the released clamps (an extra, run by naming it)
        Recipe("rl_kl_unclamped", ("experiment=modality_gap_rl/kl", *SENTENCE, *RL_REGIME, "rl.align.clamp=false"),
               "full_text", entry="rl", uncertain_start=True, default=False),
    ),
    evaluate=("builder=paired", "builder.emit=both", *SENTENCE),
    imbalance=("builder=paired", "builder.emit=mix", "imbalance.spans=image_text"),  # each view its own instances
    conditions=("text_centric", "vision_centric"),
    gap="modality_gap",
    tables=(
        ("", (
            ("text_centric", "text-centric acc."),
            ("vision_centric", "vision-centric acc."),
            ("modality_gap", "gap (text - vision)"),
            ("imbalance/per_token/text_centric", "image share of attention per token, text-centric"),
            ("imbalance/mass/text_centric", "image share of attention mass, text-centric"),
        )),
        ("The RL runs (from `metrics.jsonl`; logged steps with full-reward rollouts for the alignment columns)", (
            ("rl/reward_last_fifth", "mean reward, last fifth of the steps"),
            ("rl/aligned_rollouts", "share of rollouts re-scored by the alignment term"),
            ("rl/align_loss", "alignment term (k3, token mean)"),
            ("rl/align_inside_clamp", "share of aligned tokens inside the clamps"),
            ("rl/start_step", "start: full_text step (pre-registered rule)"),
            ("rl/start_vision_accuracy", "start: its vision-centric accuracy"),
        )),
    ),
    curves=(
        ("eval/accuracy/text_centric", "held-out accuracy, text-centric"),
        ("eval/accuracy/vision_centric", "held-out accuracy, vision-centric"),
        ("imbalance/ratio", "image share of attention (probe set)"),
        ("lm_loss", "training LM loss"),
    ),
)
# paper 1's conflict answers read the asked key's value in each shown piece before deciding, in training and in
# evaluation alike (results/preregistration-2.md): with the decision alone, no pilot learnt to compare the pieces
# (results/pilots/)
CONFLICT_READING = "conflict_reading='{first} and {second}. '"
# paper 1's runs: the conflict mixture, whole epochs, full fine-tuning (the recipes use LoRA) as every other
# embedded run
MIXING = ("data=conflict_mixture", "finetune=full", "trainer.max_steps=-1", CONFLICT_READING)
MODAL_IMBALANCE = Paper(
    key="modal_imbalance",
    title="Paper 1, cross-modal attention imbalance (arXiv 2510.02608)",
    # it: dataset-level mixing, hit: instance-level mixing of the same instructions (an image instruction with a
    # text one in every instance), hit_contexts_first: both contexts first, then both questions
    recipes=(
        *(Recipe(name, (f"experiment=modal_imbalance/{name}", *MIXING)) for name in ("it", "hit", "hit_contexts_first")),
        # not the paper's comparison (matched data): hit with as many optimizer steps as it (twice the passes)
        Recipe("hit_matched_steps", ("experiment=modal_imbalance/hit", *MIXING), epoch_scale=2.0, default=False),
    ),
    evaluate=("builder=conflict", CONFLICT_READING),
    proxy=("builder=cross_modal_qa",),
    imbalance=("builder=conflict", "imbalance.spans=evidence", CONFLICT_READING),
    preregistration="results/preregistration-2.md",
    conditions=tuple(f"discrimination/{c}" for c in CONFLICT_CONDITIONS),
    gap="discrimination_gap",
    tables=(
        # the primary figure: span-length normalised (per token, and the norm of each span's contribution), the
        # raw attention mass beside it (16 image tokens against a few text tokens: 0.84 under uniform attention)
        ("Attention imbalance on cross-modal conflicts: the image evidence's share (0.5 = balanced)", (
            ("imbalance/per_token/cross_modal", "per-token share"),
            ("imbalance/norm/cross_modal", "norm-mode share"),
            ("imbalance/mass/cross_modal", "raw mass share"),
        )),
        ("Downstream proxy (never trained): held-out QA with the facts split between image and text", (
            ("proxy/image", "image question, text distracts"),
            ("proxy/text", "text question, image distracts"),
            ("proxy/both", "one fact from each (sum)"),
            ("proxy/accuracy", "mean of the three"),
            ("competent", "unimodal competence reached (share of seeds)"),
        )),
        ("Recognition: the share of conflicts the judge reads as \"the sources disagree\"", (
            *((f"recognition/{c}", f"recognised, {c.replace('_', ' ')}") for c in CONFLICT_CONDITIONS),
            ("false_alarm", "false alarms (controls, all conditions)"),
            ("recognition_gap", "unimodal - cross-modal"),
        )),
        ("Discrimination: recognition less the false-alarm rate on the same condition's controls", (
            *((f"discrimination/{c}", c.replace("_", " ")) for c in CONFLICT_CONDITIONS),
            ("discrimination_gap", "unimodal - cross-modal"),
        )),
    ),
    curves=(
        (("eval/conflict_recognition/unimodal_image", "eval/false_conflict/unimodal_image"),
         "held-out discrimination, unimodal image"),
        (("eval/conflict_recognition/cross_modal", "eval/false_conflict/cross_modal"),
         "held-out discrimination, cross-modal"),
        ("imbalance/per_token_ratio", "image share of attention per token (probe set)"),
        ("lm_loss", "training LM loss"),
    ),
)
PAPERS = (MODALITY_GAP, MODAL_IMBALANCE)


@dataclass(frozen=True)
class Run:
    paper: Paper
    recipe: Recipe
    seed: int
    directory: Path

    @property
    def label(self) -> str:
        return f"{self.paper.key}/{self.recipe.name} seed {self.seed}"

    @property
    def key(self) -> str:
        """`<paper>/<recipe>/seed<N>`: where the run lives under the runs root and under results/runs/."""
        return f"{self.paper.key}/{self.recipe.name}/seed{self.seed}"

    def finished(self) -> bool:
        return (self.directory / "final").is_dir() and (self.directory / "eval" / "eval.json").is_file()

    def span(self) -> tuple[float, float]:
        """(start, end) wall-clock times of a finished run: its job file was written first, eval.json last."""
        return (self.directory / "job.json").stat().st_mtime, (self.directory / "eval" / "eval.json").stat().st_mtime


# The order runs start in: group by group, and within a group seed by seed (the recipes a comparison needs side by
# side); the baselines and the papers' own comparisons first, so an interrupted reproduction reports whole ones.
GROUPS = (("full_text",), ("it", "hit", "hit_contexts_first"), ("hit_matched_steps",), ("mix",), ("no_text",),
          ("kl",), ("rl_full_text", "rl_kl", "rl_kl_unclamped"), ("curriculum",), ("kl_curriculum",))
ORDER = tuple(name for group in GROUPS for name in group)
EXTRAS = tuple(recipe.name for paper in PAPERS for recipe in paper.recipes if not recipe.default)


def plan(runs_root: Path, budget: Budget) -> list[Run]:
    runs = [
        Run(paper, recipe, seed, runs_root / paper.key / recipe.name / f"seed{seed}")
        for paper in PAPERS
        for recipe in paper.recipes
        for seed in budget.seeds
    ]
    group = {name: index for index, names in enumerate(GROUPS) for name in names}
    return sorted(runs, key=lambda run: (group[run.recipe.name], run.seed, ORDER.index(run.recipe.name)))


def dependencies(run: Run, runs: list[Run]) -> list[Run]:
    """A recipe that starts from another recipe's model waits for that run (same seed)."""
    return [other for other in runs if other.seed == run.seed and other.paper is run.paper
            and other.recipe.name == run.recipe.starts_from]
