"""Reproducible small-scale experiments: a pretrained toy MoE, synthetic tasks and the method comparison.

Entry points: ``python -m esft.experiments.pretrain OUT_DIR`` (the base model) and
``python bench/method_comparison.py`` (ESFT vs FFT vs LoRA, writes ``docs/results.md``).
"""
