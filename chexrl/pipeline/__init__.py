"""`chexrl run`: the recipe as named stages with manifests (runner.py), the stages themselves (stages.py)
and the preflight that checks a configuration before any stage runs (preflight.py). docs/recipe.md."""
