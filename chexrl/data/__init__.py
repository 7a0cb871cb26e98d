"""Data: synthetic radiographs in the real datasets' formats, loaders for those formats, stats, sampling
of the paper's budgets, and image preparation. Heavy imports (pandas) stay inside functions."""
