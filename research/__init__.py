"""The paper-style method comparison (sweeps, seeds, routing plots, ``docs/results.md``); not installed.

Run it from a checkout: ``python research/method_comparison.py``.
"""
