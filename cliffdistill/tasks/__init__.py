"""Benchmark tasks under the lm-evaluation-harness protocols: ARC, HellaSwag, MMLU
(log-likelihood multiple choice) and HumanEval (generation + sandboxed execution).
See docs/EVALUATION.md; the entry point is `cliffdistill.tasks.runner`."""
