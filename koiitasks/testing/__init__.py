"""Helpers for testing tasks and koiitasks itself, shipped inside the package."""
