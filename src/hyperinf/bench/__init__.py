"""Benchmarks that the CLI exposes (``hyperinf bench ...``); scripts live in ``benchmarks/``."""
