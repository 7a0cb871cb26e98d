"""Loads every fixture module in tests/fixtures/ so expensive fixtures (one vLLM engine, one Ray
cluster, one evaluator server per test session) are shared across test files."""

import pkgutil

import tests.fixtures

pytest_plugins = [f"tests.fixtures.{m.name}" for m in pkgutil.iter_modules(tests.fixtures.__path__)]
