"""Comparison methods that train more than experts: full fine-tuning (FFT) and LoRA (via ``peft``).

They take the same tokenized data and ``TrainingConfig`` as ESFT and report the same numbers, so a user
can compare methods on their own data. See ``esft.baselines.methods.train_baseline``.
"""
