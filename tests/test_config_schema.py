"""One source of truth for the experiment settings: the fields of `ExperimentConfig`.

The command-line options, their help and defaults, the JSON Schema, docs/config-reference.md
and the secure-aggregation parameters are all generated from the fields (`config.setting`);
these tests check that each of them names every field and agrees with the field.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p2pfl import cli
from p2pfl import simulate as simulate_module
from p2pfl.config import COMMANDS, ConfigError, ExperimentConfig, json_schema, option_names, reference_markdown
from p2pfl.secagg.group import SecAggParams

REFERENCE = Path(__file__).parent.parent / "docs" / "config-reference.md"
FIELDS = list(fields(ExperimentConfig))


def _command(name: str) -> Any:
    return cli.main.commands[name]


def _param(command: str, field_name: str) -> Any:
    return next((p for p in _command(command).params if p.name == field_name), None)


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_every_setting_has_a_flag_or_says_why_not(f: dataclasses.Field) -> None:
    meta = f.metadata
    assert meta["help"].strip(), f"{f.name}: no help text"
    assert set(meta["commands"]) <= set(COMMANDS)
    if tuple(meta["commands"]) != COMMANDS:
        assert meta["file_only"], f"{f.name}: not a flag of every command, and no file_only reason"
    for command in COMMANDS:
        param = _param(command, f.name)
        if command in meta["commands"]:
            assert param is not None, f"{f.name}: no option in {command}"
            assert option_names(f)[0].split("/")[0] in param.opts
        else:
            assert param is None, f"{f.name}: an option of {command} that the field does not list"


def test_every_option_of_the_experiment_commands_is_a_setting_or_the_commands_own() -> None:
    own = {"simulate": {"config_file", "out", "dashboard", "dashboard_port", "dashboard_host"},
           "compare": {"config_file", "topologies", "secure_mode", "variants", "target", "out", "audit_runs", "noise_levels"},
           "node": {"config_file", "cluster_file", "node_id", "key_file", "run_dir", "metrics", "fresh", "record_flag"}}
    names = {f.name for f in FIELDS}
    for command in COMMANDS:
        params = {p.name for p in _command(command).params}
        assert params - names == own[command], command


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_each_settings_help_and_default(command: str) -> None:
    result = CliRunner().invoke(cli.main, [command, "--help"], terminal_width=10_000)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for f in FIELDS:
        if command not in f.metadata["commands"] or f.metadata["hidden"]:
            continue
        shown = cli._shown_default(f)
        assert f"[default: {shown}]" in _param(command, f.name).help
        flag = option_names(f)[0].replace("/", " / ")
        help_text = " ".join(f.metadata["help"].split())
        assert re.search(re.escape(flag) + r".*?" + re.escape(f"{help_text} [default: {shown}]"), text), (
            f"{command} --help: {f.name} without its help and default")
    assert "--dp-test-seed" not in text  # hidden: test only


def test_help_shows_the_real_defaults() -> None:
    param = _param("simulate", "secagg_max_samples")
    assert param.help.endswith("[default: 65536]")
    assert _param("simulate", "secure_agg").help.endswith("[default: --no-secure]")
    assert _param("node", "secagg_verify_views").help.endswith("[default: --verify-views]")
    assert _param("simulate", "label").help.endswith('[default: ""]')


# -- JSON Schema ---------------------------------------------------------------------------------


def _schema_errors(schema: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """The subset of JSON Schema that `json_schema` uses: type, enum, bounds, no extra keys."""
    props = schema["properties"]
    errors = [f"{k}: not allowed" for k in data if k not in props]
    types = {"integer": int, "number": (int, float), "string": str, "boolean": bool}
    for key, value in data.items():
        prop = props.get(key)
        if prop is None:
            continue
        if (isinstance(value, bool) and prop["type"] != "boolean") or not isinstance(value, types[prop["type"]]):
            errors.append(f"{key}: type")
            continue
        if "enum" in prop and value not in prop["enum"]:
            errors.append(f"{key}: enum")
        for word, ok in (("minimum", lambda v, b: v >= b), ("exclusiveMinimum", lambda v, b: v > b),
                         ("maximum", lambda v, b: v <= b), ("exclusiveMaximum", lambda v, b: v < b)):
            if word in prop and not ok(value, prop[word]):
                errors.append(f"{key}: {word}")
    return errors


def _validate(schema: dict[str, Any], data: dict[str, Any]) -> list[str]:
    errors = _schema_errors(schema, data)
    try:
        import jsonschema  # optional: the real validator, where installed
    except ImportError:
        return errors
    real = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(data)]
    assert bool(real) == bool(errors), (real, errors)
    return errors


EXPERIMENT_FILE = """\
[experiment]
task = "digits-cnn"
nodes = 6
topology = "complete"
rounds = 12
lr = 0.1
partition = "dirichlet"
alpha = 0.3
secure_agg = true
secagg_threshold = 0.6
min_contributors = 3
secagg_verify_views = false
secagg_clip = 8.0
secagg_sparse_above = 4
secagg_sparse_degree = 3
secagg_max_samples = 1024
secagg_patience = 5
secagg_max_deadlines = 10
round_timeout = 2.5
label = "study"
"""


def test_the_schema_names_every_setting_with_type_default_and_description() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert list(schema["properties"]) == [f.name for f in FIELDS]
    for f in FIELDS:
        prop = schema["properties"][f.name]
        assert prop["default"] == f.default
        assert prop["description"] == f.metadata["help"]
    assert schema["properties"]["dp"]["enum"] == ["off", "local", "central", "distributed"]
    assert schema["properties"]["momentum"]["minimum"] == 0
    assert schema["properties"]["momentum"]["exclusiveMaximum"] == 1
    json.dumps(schema)  # serialisable as is


def test_the_schema_accepts_real_config_files(tmp_path: Path) -> None:
    schema = json_schema()
    path = tmp_path / "experiment.toml"
    path.write_text(EXPERIMENT_FILE)
    cfg = ExperimentConfig.load(path)  # the loader accepts it, so must the schema
    assert _validate(schema, tomllib.loads(EXPERIMENT_FILE)["experiment"]) == []
    assert _validate(schema, cfg.to_dict()) == []  # a run directory's config.json
    assert _validate(schema, ExperimentConfig().to_dict()) == []


@pytest.mark.parametrize("key, value", [("nodes", 1), ("momentum", 1.0), ("dp", "maybe"), ("secagg_bits", 16),
                                        ("secagg_max_deadlines", 3), ("secagg_clip", 0.0), ("rounds", "ten"),
                                        ("secure_agg", 1), ("colour", "blue"), ("participation", 1.5)])
def test_the_schema_rejects_what_the_loader_rejects(key: str, value: Any) -> None:
    assert _validate(json_schema(), {key: value}) != []
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({key: value})
    assert err.value.field == key


def test_config_schema_command_prints_the_schema() -> None:
    result = CliRunner().invoke(cli.main, ["config", "schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json.loads(json.dumps(json_schema()))


# -- the reference in docs -----------------------------------------------------------------------


def test_the_reference_in_docs_is_up_to_date() -> None:
    result = CliRunner().invoke(cli.main, ["config", "reference"])
    assert result.exit_code == 0, result.output
    assert result.output == reference_markdown()
    assert REFERENCE.read_text() == reference_markdown(), (
        "docs/config-reference.md is stale: .venv/bin/p2pfl config reference > docs/config-reference.md")


def test_the_references_toml_block_is_the_defaults(tmp_path: Path) -> None:
    block = reference_markdown().split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "defaults.toml"
    path.write_text(block)
    assert ExperimentConfig.load(path) == ExperimentConfig().validate()
    for f in FIELDS:
        assert f"| `{f.name}` |" in reference_markdown()


# -- secure-aggregation parameters ---------------------------------------------------------------


def test_every_secagg_parameter_is_a_setting_with_the_same_default() -> None:
    mapped = {f.metadata["secagg"]: f for f in FIELDS if f.metadata.get("secagg")}
    assert set(mapped) == {f.name for f in fields(SecAggParams)}
    for p in fields(SecAggParams):
        assert mapped[p.name].default == p.default, p.name
    assert ExperimentConfig().secagg_params() == SecAggParams()


def test_secagg_settings_reach_the_parameters(tmp_path: Path) -> None:
    path = tmp_path / "experiment.toml"
    path.write_text(EXPERIMENT_FILE)
    params = ExperimentConfig.load(path).secagg_params()
    assert params == SecAggParams(threshold=0.6, min_contributors=3, clip=8.0, bits=32, sparse_above=4,
                                  sparse_degree=3, max_samples=1024, patience=5, max_deadlines=10, verify_views=False)


def test_secagg_flags_reach_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ExperimentConfig] = []

    def fake_run(cfg: ExperimentConfig, run_dir: Path, console: Any) -> Any:
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(simulate_module, "run_simulation", fake_run)
    monkeypatch.chdir(tmp_path)
    args = ["simulate", "--secure", "--secagg-clip", "4", "--secagg-patience", "6", "--secagg-max-deadlines", "9",
            "--secagg-sparse-above", "5", "--secagg-sparse-degree", "2", "--secagg-max-samples", "100",
            "--secagg-threshold", "0.75", "--min-contributors", "3", "--no-verify-views", "--out", "out"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert seen[0].secagg_params() == SecAggParams(threshold=0.75, min_contributors=3, clip=4.0, sparse_above=5,
                                                   sparse_degree=2, max_samples=100, patience=6, max_deadlines=9,
                                                   verify_views=False)


@pytest.mark.parametrize("overrides, field, words", [
    ({"secagg_clip": 0.0}, "secagg_clip", "> 0"),
    ({"secagg_clip": -1.0}, "secagg_clip", "> 0"),
    ({"secagg_bits": 64}, "secagg_bits", "one of 32"),
    ({"secagg_sparse_above": 1}, "secagg_sparse_above", ">= 2"),
    ({"secagg_sparse_degree": 1}, "secagg_sparse_degree", "0 (automatic) or >= 2"),
    ({"secagg_sparse_degree": -1}, "secagg_sparse_degree", ">= 0"),
    ({"secagg_max_samples": 0}, "secagg_max_samples", "[1, 1099511627776)"),
    ({"secagg_max_samples": 1 << 40}, "secagg_max_samples", "[1, 1099511627776)"),
    ({"secagg_patience": 0}, "secagg_patience", ">= 1"),
    ({"secagg_max_deadlines": 3}, "secagg_max_deadlines", ">= 4"),
    ({"min_contributors": 1}, "min_contributors", ">= 2"),
    ({"secagg_threshold": 0.4}, "secagg_threshold", "[0.5, 1)"),
    ({"secagg_clip": "big"}, "secagg_clip", "must be float"),
])
def test_bad_secagg_settings_name_the_field(overrides: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(overrides)
    assert err.value.field == field
    assert words in str(err.value)
