"""The engine: one training step's pieces, pure and without I/O.

`methods` (a schedule per method: step -> StepPlan), `defects` (the study's defects as switches),
`sampling` (rollout), `scoring` (per-token log-probs under a prompt view), `losses`, `update`
(the one-optimizer-step update). The model core is `cliffdistill.models`.
"""
