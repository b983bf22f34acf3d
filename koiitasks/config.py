"""``config-task.yml``: Koii's field names, validated with errors that say how to fix them.

Koii's own fields keep their names and meaning (``round_time``, ``submission_window`` and
``audit_window`` in slots; ``minimum_stake_amount``, ``total_bounty_amount`` and
``bounty_amount_per_round`` in integer base units). Koii's metadata fields (``author``,
``description``, ``tags``...) are accepted and kept so an existing Koii config loads unchanged.
koiitasks adds ``auditors_per_submission``, ``slash_fraction``, ``slot_ms``, ``task_id`` and
``max_result_bytes``, each with a default.
"""

from __future__ import annotations

import difflib
import re
import stat
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from koiitasks.errors import ConfigError
from koiitasks.model import KoiiModel, TaskId

CONFIG_FILE = "config-task.yml"

# Koii's descriptive fields: accepted so a Koii config-task.yml loads, not used by the runtime.
KOII_METADATA_FIELDS = (
    "author",
    "description",
    "repositoryUrl",
    "imageUrl",
    "infoUrl",
    "task_executable_network",
    "task_audit_program",
    "task_type",
    "token_type",
    "space",
    "requirementsTags",
    "tags",
    "environment",
    "migrationDescription",
)


def slugify(name: str) -> str:
    """A task id made from a task name: lowercase, dashes, at most 63 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63].strip("-")
    return slug or "task"


def _number_in_text(value: str) -> str:
    """What to say of a number field YAML read as text."""
    try:
        number = float(value)
    except ValueError:
        return "must be a number, not a string (remove the quotes)"
    if "e" in value.lower() and number.is_integer():
        whole = int(number)
        return (
            f"YAML reads {value} as text, not a number: write it out, {whole} "
            f"(or {whole:_} with underscores)"
        )
    return "must be a number, not a string (remove the quotes)"


class TaskConfig(KoiiModel):
    """The validated contents of ``config-task.yml``."""

    task_name: str = Field(min_length=1, max_length=200, description="the task's display name")
    task_id: TaskId | None = Field(
        None, description="names the task in stores, URLs and flow runs: a-z, 0-9 and dashes"
    )
    round_time: int = Field(gt=0, description="slots per round")
    submission_window: int = Field(gt=0, description="slots to submit, at the start of N+1")
    audit_window: int = Field(gt=0, description="slots to audit, after the submission window")
    minimum_stake_amount: int = Field(ge=0, description="base units a node must stake")
    total_bounty_amount: int = Field(gt=0, description="base units for all rounds together")
    bounty_amount_per_round: int = Field(gt=0, description="base units at most per round")
    allowed_failed_distributions: int = Field(
        3, ge=0, le=20, description="rejected distribution lists rebuilt by other nodes per round"
    )
    auditors_per_submission: int = Field(
        3, ge=1, le=25, description="other nodes that audit each submission; the majority decides"
    )
    slash_fraction: float = Field(
        0.7, ge=0.0, le=1.0, description="share of its stake a node loses when audit rejects it"
    )
    slot_ms: int = Field(400, gt=0, le=60_000, description="milliseconds per slot (Koii: ~400)")
    max_result_bytes: int = Field(
        65_536,
        gt=0,
        le=16 * 1024 * 1024,
        description="largest result a submission may carry (nested at most 100 levels deep)",
    )
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator(
        "round_time",
        "submission_window",
        "audit_window",
        "minimum_stake_amount",
        "total_bounty_amount",
        "bounty_amount_per_round",
        "allowed_failed_distributions",
        "auditors_per_submission",
        "slash_fraction",
        "slot_ms",
        "max_result_bytes",
        mode="before",
    )
    @classmethod
    def _numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML's true, "10" and 1.9 would be quietly turned into numbers; say what is wrong.
        if isinstance(value, bool):
            raise ValueError("must be a number, not true or false")  # noqa: TRY004 - pydantic
        if isinstance(value, str):  # reports ValueError as a validation error; TypeError escapes
            raise ValueError(_number_in_text(value))  # noqa: TRY004 - pydantic, as above
        if info.field_name != "slash_fraction" and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(
                    "must be a whole number (amounts are in base units: 1 KOII = 10^9 ROE, "
                    "so 1.9 KOII is 1900000000)"
                )
            return int(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TaskConfig:
        windows = self.submission_window + self.audit_window
        if self.round_time < windows:
            raise ValueError(
                f"round_time ({self.round_time}) must be at least submission_window + "
                f"audit_window ({self.submission_window} + {self.audit_window} = {windows})"
            )
        if self.bounty_amount_per_round > self.total_bounty_amount:
            raise ValueError(
                f"bounty_amount_per_round ({self.bounty_amount_per_round}) must not exceed "
                f"total_bounty_amount ({self.total_bounty_amount})"
            )
        return self

    @property
    def id(self) -> str:
        """The task id: ``task_id`` if given, else made from ``task_name``."""
        return self.task_id or slugify(self.task_name)


_OWN_FIELDS = tuple(name for name in TaskConfig.model_fields if name != "metadata")


def parse_config(data: Any, *, source: str = CONFIG_FILE) -> TaskConfig:
    """Validate a parsed YAML document; errors name ``source`` and the field."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of fields, got {type(data).__name__}",
            hint="see examples/hash-puzzle/config-task.yml for a complete file",
        )
    fields: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for key, value in data.items():
        if key in KOII_METADATA_FIELDS:
            metadata[str(key)] = value
        elif key in _OWN_FIELDS:
            fields[key] = value
        else:
            close = difflib.get_close_matches(str(key), _OWN_FIELDS + KOII_METADATA_FIELDS, n=1)
            raise ConfigError(
                f"{source}: unknown field {key!r}",
                hint=f"did you mean {close[0]!r}?" if close else "remove it; see docs/config.md",
            )
    try:
        metadata = _jsonable(metadata, [MAX_METADATA_VALUES])
    except ValueError as e:
        raise ConfigError(f"{source}: Koii's metadata fields hold {e}") from e
    try:
        return TaskConfig.model_validate({**fields, "metadata": metadata})
    except ValidationError as e:
        raise ConfigError(_describe(e, source), hint=_hint_for(e)) from e


#: A config-task.yml is a few hundred bytes; anything this big is a mistake or an attack.
MAX_CONFIG_BYTES = 256 * 1024
#: Values and nesting the metadata may hold once YAML's aliases are expanded.
MAX_METADATA_VALUES = 10_000
MAX_METADATA_DEPTH = 32


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice: a reader sees the first value, YAML would
    silently keep the last."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"field {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def load_config(path: Path) -> TaskConfig:
    """Read and validate a ``config-task.yml``."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
            raise ConfigError(f"{path}: cannot read: not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: is {info.st_size:,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit "
                "for a config-task.yml"
            )
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError) as e:
        raise ConfigError(
            f"{path}: no such file", hint=f"a task directory needs a {CONFIG_FILE}"
        ) from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from e
    except RecursionError as e:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from e
    return parse_config(data, source=str(path))


def _jsonable(value: Any, budget: list[int], depth: int = 0) -> Any:
    """``value`` as JSON values, within a budget: YAML aliases can make a few lines expand into
    billions of values, or into a value that contains itself."""
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_METADATA_DEPTH:
        raise ValueError(
            f"more than {MAX_METADATA_VALUES:,} values or {MAX_METADATA_DEPTH} levels once "
            "YAML aliases are expanded"
        )
    if isinstance(value, dict):
        return {str(k): _jsonable(v, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, budget, depth + 1) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            lines.append(f"{source}: missing required field {field!r}")
        elif field:
            got = item.get("input")
            lines.append(f"{source}: field {field!r}: {message} (got {got!r})")
        else:
            lines.append(f"{source}: {message}")
    return "\n".join(lines)


def _hint_for(error: ValidationError) -> str | None:
    kinds = {item["type"] for item in error.errors()}
    if "missing" in kinds:
        return (
            "Koii's required fields are task_name, round_time, submission_window, "
            "audit_window, minimum_stake_amount, total_bounty_amount, bounty_amount_per_round"
        )
    return None
