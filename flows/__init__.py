"""Prefect flows: thin wrappers that compose koiitasks library functions."""
