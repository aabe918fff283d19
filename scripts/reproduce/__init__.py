"""Reproduce both papers' ablations on the embedded default (tiny LLaVA, offline synthetic task, CPU), 5 seeds.

    python scripts/reproduce.py            # the full run (results/ and the README's reproduction section)
    python scripts/reproduce.py --quick    # a smoke run of every step in a few minutes (what the tests run)
    python scripts/reproduce.py --report   # run nothing: every table, plot and the README section from results/runs/

Every run is `xmodal-train` (or `xmodal-rl`) with the in-training attention probe and held-out evaluation, then
`xmodal-imbalance` (weight and norm modes) and `xmodal-eval` on held-out records (another data seed), whose records
sharing content with any training record are listed and left out of the statistics: the same functions on the same
composed configs as those console scripts, in one process per run with one thread, two runs at a time. A run
directory `<runs>/<paper>/<recipe>/seed<N>` is finished when it holds `final/` and `eval/eval.json`; a rerun skips
finished runs. Each finished run's files (eval.json, predictions, imbalance.json in both modes, metrics.jsonl, the
overlap list, the commit it trained at) are archived under `<out>/runs/`, from which alone `--report` rebuilds
`results.json`, the tables, the plots and the README section.

Modules: `papers` (budgets, recipes, the plan), `runner` (the worker and the scheduler), `statistics` (tallies per
held-out record and the hierarchical bootstrap), `report` (tables, pre-registered verdicts, README), `plots`.
"""
