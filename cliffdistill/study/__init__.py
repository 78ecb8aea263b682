"""The toy study built on runs: the testbed (budget, pretraining, prepare, headroom checks),
sweeps (grid and runner, worker processes), the main job's modes, results writing, extensions."""
