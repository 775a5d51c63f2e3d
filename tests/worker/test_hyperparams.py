"""``auto`` hyperparameters: OpenAI's epoch heuristic, batch size, sequence length, checkpoint cadence."""

from __future__ import annotations

from worker.hyperparams import auto_epochs, auto_seq_len, resolve, training_kwargs


def test_auto_epochs_follows_the_openai_heuristic():
    assert auto_epochs(10) == 10 and auto_epochs(3) == 25 and auto_epochs(100) == 3 and auto_epochs(20_000) == 1


def test_auto_seq_len_fits_the_longest_example_within_the_context():
    assert auto_seq_len({"max": 40}, 2048) == 128
    assert auto_seq_len({"max": 9000}, 2048) == 2048
    assert auto_seq_len(None, 512) == 512


def test_resolve_and_training_kwargs():
    auto = {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate": "auto",
        "seq_len": "auto",
        "max_steps": None,
        "grad_accum_steps": 1,
        "save_every": None,
    }
    resolved = resolve(auto, 20, {"max": 10}, 2048)
    assert resolved["n_epochs"] == 5 and resolved["batch_size"] == 8 and resolved["learning_rate"] == 1e-5
    assert resolved["total_steps"] == 15 and resolved["save_every"] == 2
    kwargs = training_kwargs({**resolved, "max_steps": 7}, {"esft": {"train_shared_experts": True}}, seed=3)
    assert "n_epochs" not in kwargs and kwargs["max_steps"] == 7 and kwargs["seed"] == 3
    assert kwargs["train_shared_experts"] and not kwargs["train_non_expert_modules"]
    assert "total_steps" not in kwargs
