"""The per-layer top-p rule, its edge cases, and the expert-config format (official and ours)."""

from __future__ import annotations

import json

import pytest

from esft.config import SelectionConfig
from esft.errors import AdapterMismatchError, ConfigError
from esft.expert_config import ExpertConfig
from esft.scoring.scores import ExpertScores, LayerScores
from esft.selection import select_experts, select_layer


def test_keeps_the_expert_that_crosses_the_threshold():
    assert select_layer([0.05, 0.4, 0.3, 0.25], top_p=0.5) == [1, 2]
    assert select_layer([0.05, 0.4, 0.3, 0.25], top_p=0.4) == [1]  # reaching p exactly stops


def test_ties_break_by_lower_expert_id():
    assert select_layer([0.25, 0.25, 0.25, 0.25], top_p=0.3) == [0, 1]
    assert select_layer([0.1, 0.3, 0.3, 0.3], top_p=0.3) == [1]


def test_top_p_one_selects_every_expert_with_a_score():
    assert select_layer([0.1, 0.2, 0.0, 0.7], top_p=1.0) == [0, 1, 3]
    # Float rounding of normalised scores must not drop the last expert.
    thirds = [1 / 3, 1 / 3, 1 / 3]
    assert select_layer(thirds, top_p=1.0) == [0, 1, 2]


def test_one_dominant_expert_and_at_least_one_per_layer():
    assert select_layer([0.01, 0.97, 0.01, 0.01], top_p=0.9) == [1]
    assert select_layer([0.0, 0.0, 0.0], top_p=0.2) == [0]  # a layer no token reached


def test_cap_per_layer():
    assert select_layer([0.25, 0.25, 0.25, 0.25], top_p=1.0, max_experts=2) == [0, 1]


def test_gate_raw_values_are_normalised_within_the_layer():
    # Raw mean gate values need not sum to one; the rule uses shares of the layer's total.
    assert select_layer([0.2, 1.0, 0.6, 0.2], top_p=0.5) == [1]


def test_select_experts_uses_the_chosen_score_and_records_provenance():
    scores = ExpertScores(
        {1: LayerScores([0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.1, 0.3], 2)},
        10,
        2,
        base_model={"model_type": "mixtral", "config_hash": "sha256:x"},
    )
    token = select_experts(scores, SelectionConfig("token", 0.5))
    gate = select_experts(scores, SelectionConfig("gate", 0.5))
    assert token.experts == {1: [0]} and gate.experts == {1: [2]}
    data = token.to_dict()
    assert data["score_function"] == "token" and data["top_p"] == 0.5
    assert data["base_model"]["config_hash"] == "sha256:x" and data["scores"] == {"1": [0.6, 0.3, 0.1]}


def test_default_top_p_follows_the_paper():
    assert SelectionConfig("token").top_p == 0.2
    assert SelectionConfig("gate").top_p == 0.1


@pytest.mark.parametrize("top_p", [0, -0.1, 1.5, True, "0.2"])
def test_top_p_outside_range_is_rejected(top_p):
    with pytest.raises(ConfigError, match="top_p"):
        SelectionConfig("token", top_p)


def test_official_format_loads_as_is(tmp_path):
    official = {"experts": {"1": [8, 26, 55], "2": [3]}, "shared_experts": False, "non_expert_modules": False}
    path = tmp_path / "official.json"
    path.write_text(json.dumps(official))
    config = ExpertConfig.load(path)
    assert config.experts == {1: [8, 26, 55], 2: [3]} and not config.shared_experts
    config.check_model({"config_hash": "sha256:any"}, {1: 64, 2: 64})  # no identity recorded: accepted


def test_config_for_another_model_or_missing_layers_is_rejected():
    config = ExpertConfig({1: [3]}, base_model={"model_type": "mixtral", "config_hash": "sha256:a"})
    with pytest.raises(AdapterMismatchError, match="config hash"):
        config.check_model({"model_type": "mixtral", "config_hash": "sha256:b"}, {1: 8})
    with pytest.raises(AdapterMismatchError, match="layer 1"):
        ExpertConfig({1: [9]}).check_model({}, {1: 8})
    with pytest.raises(AdapterMismatchError, match="not an MoE layer"):
        ExpertConfig({7: [0]}).check_model({}, {1: 8})


@pytest.mark.parametrize(
    "bad",
    [
        {"experts": []},
        {"experts": {"x": [1]}},
        {"experts": {"1": [1, 1]}},
        {"experts": {"1": ["a"]}},
        [],
        {"experts": {}, "shared_experts": "yes"},
    ],
)
def test_malformed_expert_configs_name_the_problem(bad):
    with pytest.raises(ConfigError):
        ExpertConfig.from_dict(bad)
