"""Evaluation and the generalization report: in-distribution against out-of-distribution, during and after
training (the paper's central finding, made visible for every run).

Pure parts (no I/O): `selection` (checkpoint selection policies and their ties, the trade-off warning or
note, the stop rule, EMA smoothing), `comparison` (transfer gaps, change against the parent model with paired
intervals, warnings over a results document), `tables` (the paper's table layouts), `intervals` (the paired
intervals as tables and summary lines) and `render` (Markdown, HTML and CSV text). With I/O: `plots` (PNG figures),
`rollouts` (greedy and sampled completions of a test set through a rollout router, and their metrics; the
training loop's evaluation uses it too), `runner` (models x prompts x test sets through the rollout
workers; writes results.*) and `report` (`write_report(run_dir)`). Metrics are
`chexrl.core.metrics.DatasetMetrics`; an entry of a results document is an `EvaluationRecord`. Heavy
imports (matplotlib, Ray, vLLM) stay inside the modules that need them, so importing
`chexrl.evaluation.selection` from the training loop costs nothing.
"""
