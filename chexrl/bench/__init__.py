"""Benchmarks behind `chexrl bench ...`: each writes its figures as JSON, with the settings and device."""
