"""Fixtures for the RL tests: the core tests' session cache (tiny models and rendered images built once)."""

from tests.core.conftest import cache_dir  # noqa: F401  (a fixture, found by name)
