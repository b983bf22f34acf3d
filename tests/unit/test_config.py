"""Specification of :mod:`koiitasks.config`: Koii's config-task.yml, validated helpfully."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from koiitasks.config import CONFIG_FILE, TaskConfig, load_config, parse_config, slugify
from koiitasks.errors import ConfigError

HASH_PUZZLE = Path(__file__).resolve().parents[2] / "examples" / "hash-puzzle"

VALID: dict[str, Any] = {
    "task_name": "Hash Puzzle",
    "round_time": 10,
    "submission_window": 4,
    "audit_window": 4,
    "minimum_stake_amount": 1_000_000_000,
    "total_bounty_amount": 100_000_000_000,
    "bounty_amount_per_round": 1_000_000_000,
}

_DROP = object()


def _yaml(**changes: Any) -> str:
    """The valid config with ``changes`` applied; a value of ``_DROP`` removes the field."""
    data = {**VALID, **changes}
    return yaml.safe_dump({k: v for k, v in data.items() if v is not _DROP}, sort_keys=False)


def _renamed(old: str, new: str) -> str:
    return _yaml(**{old: _DROP, new: VALID[old]})


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / CONFIG_FILE
    path.write_text(text, encoding="utf-8")
    return path


MALFORMED = [
    pytest.param(_yaml(round_time=_DROP), ["missing required field 'round_time'"], id="missing"),
    pytest.param(
        _renamed("round_time", "round_tme"),
        ["unknown field 'round_tme'", "did you mean 'round_time'?"],
        id="unknown-field-typo",
    ),
    pytest.param(_yaml(colour="red"), ["unknown field 'colour'"], id="unknown-field"),
    pytest.param(
        _yaml(round_time="ten"), ["field 'round_time'", "not a string", "'ten'"], id="string"
    ),
    pytest.param(
        _yaml().replace("bounty_amount_per_round: 1000000000", "bounty_amount_per_round: 1e9"),
        [
            "field 'bounty_amount_per_round'",
            "YAML reads 1e9 as text, not a number: write it out, 1000000000 (or 1_000_000_000",
        ],
        id="exponent-without-a-dot",
    ),
    pytest.param(
        _yaml(round_time="10"),
        ["field 'round_time'", "'10'"],
        id="numeric-string",
    ),
    pytest.param(
        _yaml(minimum_stake_amount=-5),
        ["field 'minimum_stake_amount'", "greater than or equal to 0", "-5"],
        id="negative-amount",
    ),
    pytest.param(
        _yaml(round_time=0), ["field 'round_time'", "greater than 0"], id="zero-round-time"
    ),
    pytest.param(
        _yaml(round_time=7),
        ["round_time (7) must be at least submission_window + audit_window (4 + 4 = 8)"],
        id="round-shorter-than-windows",
    ),
    pytest.param(
        _yaml(bounty_amount_per_round=200_000_000_000),
        ["bounty_amount_per_round (200000000000) must not exceed total_bounty_amount"],
        id="bounty-per-round-over-total",
    ),
    pytest.param(
        _yaml(bounty_amount_per_round=1.9),
        ["field 'bounty_amount_per_round'", "whole number", "base units", "1.9"],
        id="fractional-amount",
    ),
    pytest.param(
        _yaml(round_time=True), ["field 'round_time'", "not true or false"], id="bool-round-time"
    ),
    pytest.param(
        _yaml(minimum_stake_amount=False),
        ["field 'minimum_stake_amount'", "not true or false"],
        id="bool-amount",
    ),
    pytest.param(
        _yaml(auditors_per_submission=True),
        ["field 'auditors_per_submission'"],
        id="bool-auditors-per-submission",
    ),
    pytest.param(
        _yaml(slash_fraction=True),
        ["field 'slash_fraction'"],
        id="bool-slash-fraction",
    ),
    pytest.param(
        _yaml(slash_fraction=1.5),
        ["field 'slash_fraction'", "less than or equal to 1"],
        id="slash-fraction-over-one",
    ),
    pytest.param(
        _yaml(task_id="Hash Puzzle"), ["field 'task_id'", "'Hash Puzzle'"], id="bad-task-id"
    ),
    pytest.param(
        "task_name: T\nround_time: 10\n  submission_window: 4\n",
        ["not valid YAML at line 3"],
        id="yaml-syntax-error",
    ),
    pytest.param(
        "- task_name: T\n- round_time: 10\n", ["expected a mapping of fields", "list"], id="list"
    ),
    pytest.param("", ["expected a mapping of fields"], id="empty-file"),
    pytest.param("just text\n", ["expected a mapping of fields", "str"], id="scalar"),
]


class TestLoadConfig:
    """Reading config-task.yml from disk."""

    def test_the_example_config_loads(self) -> None:
        """examples/hash-puzzle/config-task.yml is valid and keeps its values and metadata."""
        config = load_config(HASH_PUZZLE / CONFIG_FILE)
        assert config.task_name == "Hash Puzzle"
        assert config.id == "hash-puzzle"
        assert (config.round_time, config.submission_window, config.audit_window) == (10, 4, 4)
        assert config.bounty_amount_per_round == 1_000_000_000
        assert config.metadata["author"] == "koiitasks"

    def test_a_valid_config_loads(self, tmp_path: Path) -> None:
        """A config with Koii's required fields loads with koiitasks' defaults for the rest."""
        config = load_config(_write(tmp_path, _yaml()))
        assert config.model_dump(include=set(VALID)) == VALID
        assert config.auditors_per_submission == 3
        assert config.slash_fraction == 0.7
        assert config.slot_ms == 400
        assert config.max_result_bytes == 65_536
        assert config.allowed_failed_distributions == 3
        assert config.metadata == {}

    def test_windows_may_fill_the_whole_round(self, tmp_path: Path) -> None:
        """round_time equal to submission_window + audit_window is allowed."""
        assert load_config(_write(tmp_path, _yaml(round_time=8))).round_time == 8

    def test_whole_floats_are_whole_numbers(self, tmp_path: Path) -> None:
        """An amount written as 1000.0 is the whole number 1000."""
        config = load_config(_write(tmp_path, _yaml(minimum_stake_amount=1000.0)))
        assert config.minimum_stake_amount == 1000
        assert isinstance(config.minimum_stake_amount, int)

    @pytest.mark.parametrize(("text", "fragments"), MALFORMED)
    def test_a_malformed_config_names_the_file_and_what_is_wrong(
        self, tmp_path: Path, text: str, fragments: list[str]
    ) -> None:
        """Every malformed config is a ConfigError whose message names the file and the field."""
        path = _write(tmp_path, text)
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ")
        for fragment in fragments:
            assert fragment in message

    def test_a_missing_field_hint_lists_koiis_required_fields(self, tmp_path: Path) -> None:
        """The hint for a missing field lists every field Koii requires."""
        with pytest.raises(ConfigError) as caught:
            load_config(_write(tmp_path, _yaml(audit_window=_DROP)))
        assert caught.value.hint is not None
        for field in VALID:
            assert field in caught.value.hint

    def test_every_invalid_field_is_reported_at_once(self, tmp_path: Path) -> None:
        """Two bad fields give one error with a line for each, so one edit fixes both."""
        with pytest.raises(ConfigError) as caught:
            load_config(_write(tmp_path, _yaml(round_time=0, slash_fraction=2)))
        assert "field 'round_time'" in caught.value.message
        assert "field 'slash_fraction'" in caught.value.message

    def test_a_missing_file_is_a_config_error(self, tmp_path: Path) -> None:
        """Loading a file that does not exist is a ConfigError naming the path."""
        path = tmp_path / CONFIG_FILE
        with pytest.raises(ConfigError, match="no such file") as caught:
            load_config(path)
        assert str(path) in str(caught.value)

    def test_a_folder_is_a_config_error(self, tmp_path: Path) -> None:
        """Loading a folder in place of the file is a ConfigError, not an OSError."""
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(tmp_path)

    def test_a_file_that_is_not_utf8_is_a_config_error(self, tmp_path: Path) -> None:
        """A config file that is not UTF-8 is a ConfigError, not a UnicodeDecodeError."""
        path = tmp_path / CONFIG_FILE
        path.write_bytes(b"task_name: \xff\xfe\n")
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(path)


class TestKoiiMetadata:
    """Koii's descriptive fields, accepted so an existing Koii config loads unchanged."""

    def test_metadata_fields_are_accepted_and_kept(self, tmp_path: Path) -> None:
        """author, description, tags, requirementsTags... load into .metadata as written."""
        metadata: dict[str, Any] = {
            "author": "Koii",
            "description": "A task",
            "repositoryUrl": "https://github.com/koii-network/task-template",
            "imageUrl": "https://example.org/i.png",
            "infoUrl": "https://example.org",
            "task_executable_network": "IPFS",
            "task_audit_program": "dist/main.js",
            "task_type": "KOII",
            "token_type": "KOII",
            "space": 1,
            "tags": ["pow", "example"],
            "requirementsTags": [{"type": "CPU", "value": "4-core"}],
            "environment": "TEST",
            "migrationDescription": "",
        }
        config = load_config(_write(tmp_path, _yaml(**metadata)))
        assert config.metadata == metadata
        assert config.task_name == "Hash Puzzle"

    def test_yaml_values_without_a_json_form_are_kept_as_text(self, tmp_path: Path) -> None:
        """A YAML date in a metadata field is kept as its text, so metadata stays JSON."""
        config = load_config(_write(tmp_path, _yaml(description=datetime.date(2024, 5, 1))))
        assert config.metadata == {"description": "2024-05-01"}


class TestTaskId:
    """The id a task is stored and named under."""

    def test_defaults_to_a_slug_of_the_task_name(self) -> None:
        """Without task_id the id is made from task_name."""
        assert parse_config({**VALID, "task_name": "Hash Puzzle!"}).id == "hash-puzzle"

    def test_task_id_overrides_the_slug(self) -> None:
        """An explicit task_id wins over the name."""
        assert parse_config({**VALID, "task_id": "puzzle-2"}).id == "puzzle-2"

    @pytest.mark.parametrize(
        ("name", "slug"),
        [
            pytest.param("Hash Puzzle", "hash-puzzle", id="spaces"),
            pytest.param("  --Web  Crawler (v2)--  ", "web-crawler-v2", id="punctuation"),
            pytest.param("!!!", "task", id="nothing-left"),
            pytest.param("Ünïcode Task", "n-code-task", id="non-ascii-dropped"),
            pytest.param("a" * 62 + " b", "a" * 62, id="long-no-trailing-dash"),
            pytest.param("x" * 100, "x" * 63, id="long-truncated"),
        ],
    )
    def test_slugify(self, name: str, slug: str) -> None:
        """A slug is lowercase letters, digits and single dashes, at most 63 characters."""
        assert slugify(name) == slug

    def test_every_slug_is_a_valid_task_id(self) -> None:
        """A slugged id passes TaskConfig's own task_id rule."""
        for name in ["Hash Puzzle", "!!!", "Ünïcode Task", "a" * 62 + " b", "x" * 100]:
            assert TaskConfig.model_validate({**VALID, "task_id": slugify(name)}).id == slugify(
                name
            )


class TestParseConfig:
    """Validating an already parsed document."""

    def test_errors_name_config_task_yml_by_default(self) -> None:
        """Without a source, errors name config-task.yml."""
        with pytest.raises(ConfigError, match=r"^config-task\.yml: missing required field"):
            parse_config({})

    def test_errors_name_the_given_source(self) -> None:
        """A caller's source name is used in the message."""
        with pytest.raises(ConfigError, match=r"^tasks/x/task\.json: expected a mapping"):
            parse_config([], source="tasks/x/task.json")


_LAUGHS = "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 8))


class TestHostileYaml:
    """A config-task.yml made to mislead or to exhaust the loader is refused quickly."""

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            pytest.param(_yaml() + "round_time: 20\n", "'round_time' is given twice", id="dup"),
            pytest.param(
                _yaml() + "tags: &l0 [x, x, x, x, x, x, x, x, x, x]\nenvironment:\n" + _LAUGHS,
                "more than 10,000 values",
                id="billion-laughs",
            ),
            pytest.param(_yaml() + "tags: &a [*a]\n", "recursive", id="recursive-alias"),
            pytest.param(
                _yaml() + "tags: " + "[" * 1000 + "]" * 1000 + "\n",
                "nested too deeply",
                id="deep-nesting",
            ),
            pytest.param(
                _yaml() + "# " + "x" * (300 * 1024) + "\n", "over the 262,144-byte", id="huge"
            ),
        ],
    )
    def test_is_a_config_error_naming_the_problem(
        self, tmp_path: Path, text: str, fragment: str
    ) -> None:
        """Duplicated keys, alias bombs, deep nesting and huge files are ConfigErrors."""
        with pytest.raises(ConfigError, match=fragment):
            load_config(_write(tmp_path, text))

    def test_a_named_pipe_is_refused_without_blocking(self, tmp_path: Path) -> None:
        """A FIFO in place of the file (reading it would wait forever) is refused at once."""
        path = tmp_path / CONFIG_FILE
        os.mkfifo(path)
        with pytest.raises(ConfigError, match="not a regular file"):
            load_config(path)
