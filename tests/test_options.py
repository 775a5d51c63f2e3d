"""Every option is declared once (esft.config) and exposed exactly where its declaration says.

For each declared option, its exposure is compared with what users actually see: the flags of
``esft score/select/train --help``, the fields of the committed ``openapi.json`` and the values the worker
sets when it builds the library configs of a job.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.core.settings import Settings
from api.services import job_options
from esft.cli import app
from esft.config import (
    AUTO_RULES,
    CONFIG_CLASSES,
    DataFacts,
    ScoringConfig,
    SelectionConfig,
    TrainingConfig,
    n_train_examples,
    resolve_auto,
)
from esft.errors import ConfigError
from esft.options import declared_options

OPENAPI = json.loads((Path(__file__).resolve().parents[1] / "openapi.json").read_text())
COMMANDS = {ScoringConfig: "score", SelectionConfig: "select", TrainingConfig: "train"}
SECTIONS = {"method": "ESFTParams", "hyperparameters": "Hyperparameters", "job": "JobCreate"}
OPTIONS = [(cls, o) for cls in CONFIG_CLASSES for o in declared_options(cls)]


def _id(item) -> str:
    return f"{item[0].__name__}.{item[1].name}" if isinstance(item, tuple) else str(item)


@pytest.fixture(scope="module")
def help_flags() -> dict[type, set[str]]:
    runner = CliRunner()
    flags = {}
    for cls, command in COMMANDS.items():
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
        assert result.exit_code == 0, result.output
        flags[cls] = set(re.findall(r"(--[a-z][a-z0-9-]*)", result.output))
    return flags


@pytest.fixture(scope="module")
def worker_configs() -> dict[type, object]:
    """The configs the worker builds for a job created with every API option at its default."""
    from api.schemas.jobs import JobCreate
    from api.services.jobs import job_method

    spec = JobCreate(model="m", training_file="f", seed=7)
    values = job_options.spec_values(job_method(spec), spec.seed)
    resolved = job_options.resolve(values, DataFacts(n_examples=40, max_tokens=30, max_context=2048), Settings())
    return {cls: (job_options.worker_values(cls, resolved), job_options.config_for(cls, resolved))
            for cls in CONFIG_CLASSES}


@pytest.mark.parametrize(("cls", "opt"), OPTIONS, ids=[_id(item) for item in OPTIONS])
def test_cli_flag_exists_exactly_when_declared(cls, opt, help_flags):
    flags = set(opt.cli_flag.split("/"))
    assert (flags <= help_flags[cls]) == ("cli" in opt.expose), (opt.name, opt.expose, sorted(help_flags[cls]))


@pytest.mark.parametrize(("cls", "opt"), OPTIONS, ids=[_id(item) for item in OPTIONS])
def test_openapi_field_exists_exactly_when_declared(cls, opt):
    properties = OPENAPI["components"]["schemas"][SECTIONS[opt.section]]["properties"]
    if "api" not in opt.expose:  # absent, unless another config's option of the same name is the API field
        same_name = [o for _, o in OPTIONS if o.name == opt.name and "api" in o.expose and o.section == opt.section]
        assert (opt.name in properties) == bool(same_name), (opt.name, opt.section)
        return
    assert opt.name in properties, (opt.name, opt.section)
    field = properties[opt.name]
    assert field["description"].startswith(opt.help)
    if opt.auto:
        assert field["default"] == "auto"
    members = field.get("anyOf", [field])
    numeric = next((m for m in members if m.get("type") in ("integer", "number")), None)
    if opt.kind in (int, float):
        bounds = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
        declared = {key: getattr(opt, name) for name, key in bounds.items() if getattr(opt, name) is not None}
        assert {key: numeric[key] for key in bounds.values() if key in numeric} == declared


@pytest.mark.parametrize(("cls", "opt"), OPTIONS, ids=[_id(item) for item in OPTIONS])
def test_worker_sets_exactly_the_declared_options(cls, opt, worker_configs):
    values, config = worker_configs[cls]
    assert (opt.name in values) == ("worker" in opt.expose)
    if opt.name not in values:
        assert getattr(config, opt.name) == opt.default  # the library default, never a worker restatement


def test_every_auto_option_has_one_rule():
    declared = {o.name for _, o in OPTIONS if o.auto}
    assert declared == set(AUTO_RULES)


def test_auto_values_resolved_by_the_library():
    resolved = resolve_auto({"n_epochs": "auto", "batch_size": "auto", "learning_rate": "auto", "seq_len": "auto",
                             "save_every": "auto", "score_function": "gate", "top_p": "auto", "max_steps": None,
                             "grad_accum_steps": 1}, DataFacts(n_examples=20, max_tokens=10, max_context=2048))
    assert resolved["n_epochs"] == 5 and resolved["batch_size"] == 8 and resolved["learning_rate"] == 1e-5
    assert resolved["seq_len"] == 64 and resolved["top_p"] == 0.1
    assert resolved["total_steps"] == 15 and resolved["save_every"] == 2


# --- the one step-count formula (its cases: tests/esft/training/test_loop.py) ---------------------------


def test_resolved_steps_count_after_the_validation_split():
    assert n_train_examples(10, 0.2) == 8 and n_train_examples(2, 0.1) == 1 and n_train_examples(1, 0.5) == 1
    resolved = resolve_auto({"batch_size": 4, "n_epochs": 1, "validation_split": 0.5}, DataFacts(n_examples=16))
    assert resolved["total_steps"] == 2  # 8 examples train, 8 validate


def test_worker_and_library_split_agree():
    from esft.data.batching import split_validation

    for n, fraction in [(10, 0.2), (3, 0.5), (2, 0.01), (7, 0.0)]:
        train, _ = split_validation(n, fraction, seed=0)
        assert len(train) == n_train_examples(n, fraction)


def test_static_bounds_reject_non_finite_and_out_of_range_values():
    with pytest.raises(ConfigError) as info:
        TrainingConfig(learning_rate=float("nan"), batch_size=0, warmup_ratio=1.0, max_grad_norm=float("inf"))
    assert info.value.param == "batch_size" and len(info.value.problems) == 4
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainingConfig(learning_rate=2.0)
    with pytest.raises(ConfigError, match="top_p"):
        SelectionConfig(top_p=0.0)


# --- each method's own options (esft.methods.*.config): declared once, in its job-spec object -------------

METHOD_SCHEMAS = {"esft_lora": "ESFTLoRAParams", "fft": "FFTParams", "lora": "LoRAParams", "lora_experts": "LoRAParams"}


@pytest.mark.parametrize("method", sorted(METHOD_SCHEMAS))
def test_method_options_are_fields_of_their_method_object_and_reach_the_worker(method):
    from api.schemas.jobs import JobCreate
    from api.services.jobs import job_method
    from esft.methods import get_method

    cls = get_method(method).config_cls
    properties = OPENAPI["components"]["schemas"][METHOD_SCHEMAS[method]]["properties"]
    own = [o for o in declared_options(cls) if "api" in o.expose]
    assert own and all(properties[o.name]["description"].startswith(o.help) for o in own)
    assert ("top_p" in properties) == get_method(method).needs_expert_config
    assert "train_shared_experts" not in properties  # ESFT's paper variants belong to ESFT
    given = {own[0].name: (not own[0].default) if own[0].kind is bool else 3}
    spec = JobCreate(model="m", training_file="f", method={"type": method, method: given})
    values = job_options.spec_values(job_method(spec), 1)
    resolved = job_options.resolve(values, DataFacts(n_examples=40, max_tokens=30, max_context=2048), Settings())
    assert job_options.config_for(cls, resolved) == cls(**given)
