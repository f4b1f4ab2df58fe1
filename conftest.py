"""Loaded for every test under this directory: the test tiers and their budgets."""

pytest_plugins = ("testkit.tiers",)
