"""Benchmarks of the usage push path: throughput, cold start, memory and package size.

Run them with ``./scripts/bench`` (``--quick`` for a short smoke run, ``--json`` for a
machine-readable report). Every figure is measured next to a baseline in the same run, because
the machines it runs on are shared and noisy: ratios travel between machines, absolute times do
not.
"""
