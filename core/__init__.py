"""xmodal's kernel: what every layer may import, and which imports nothing of xmodal outside itself.

- `errors`: DataError (a bad record: file, record, field) and ConfigError (a config that cannot work), the two
  kinds of user error every console script prints as one line;
- `atomic`: crash-safe file writes (checkpoints markers, metrics.jsonl, run files);
- `scoring`: when an answer is correct (rewards, evaluation and metrics all decide it here, the same way), by a
  grader named `lenient` or `release`;
- `release_grader`: paper 2's released grading rules (last boxed answer, its grader, the 1 % helper);
- `tokens`: the ignored label id and a model's image placeholder id;
- `distributed`: launcher environment, DeepSpeed-on-CPU state, barriers, the shared-filesystem check of a
  multi-node run;
- `console`: how console scripts report user errors, quiet logs and run summaries.
"""
