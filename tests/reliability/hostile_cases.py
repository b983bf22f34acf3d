"""The hostile-input corpus: configs, task folders, command lines, key files and names.

Each table row is one input and the words its refusal must contain. The tests that run them
are in ``test_hostile_input.py``; hostile node replies are in ``test_hostile_replies.py``.
Command lines use ``{task}`` (a valid task folder), ``{store}`` (a store holding a settled round
of it, 4 nodes, seed 1) and ``{empty}`` (an empty folder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from koiitasks.identity import Keypair, encode_b58, load_key, save_key
from koiitasks.testing import FAST_CONFIG
from tests.conftest import ECHO_TASK

KEY = Keypair.from_seed(b"hostile key files")
ParameterSet = Any  # what pytest.param returns


def config(**changes: Any) -> str:
    """The valid test config with ``changes``."""
    return yaml.safe_dump({**FAST_CONFIG, **changes}, sort_keys=False)


def _laughs() -> str:
    lines = ["tags: &l0 [x, x, x, x, x, x, x, x, x, x]", "environment:"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 8)]
    return config() + "\n".join(lines) + "\n"


CONFIGS: list[ParameterSet] = [
    pytest.param("", "expected a mapping of fields", id="empty-file"),
    pytest.param("- 1\n- 2\n", "expected a mapping of fields", id="a-list"),
    pytest.param("42\n", "expected a mapping of fields", id="a-number"),
    pytest.param(b"task_name: \xff\xfe\n", "cannot read", id="not-utf8"),
    pytest.param(b"\x00\x01\x02", "not valid YAML", id="binary"),
    pytest.param(config(task_name=""), "field 'task_name'", id="empty-name"),
    pytest.param(config(task_name="x" * 500), "field 'task_name'", id="name-500-chars"),
    pytest.param(config(task_name=None), "field 'task_name'", id="name-null"),
    pytest.param(config(task_id="../../etc"), "field 'task_id'", id="id-parent-dirs"),
    pytest.param(config(task_id="a/b"), "field 'task_id'", id="id-with-slash"),
    pytest.param(config(task_id="a\x00b"), "field 'task_id'", id="id-with-nul"),
    pytest.param(config(task_id="ABC"), "field 'task_id'", id="id-upper-case"),
    pytest.param(config(task_id="x" * 64), "field 'task_id'", id="id-64-chars"),
    pytest.param(config(task_id="tâche"), "field 'task_id'", id="id-unicode"),
    pytest.param(config(task_id=".hidden"), "field 'task_id'", id="id-hidden"),
    pytest.param(config(round_time=float("inf")), "whole number", id="round-time-inf"),
    pytest.param(config(round_time=float("nan")), "whole number", id="round-time-nan"),
    pytest.param(config(round_time=-10), "field 'round_time'", id="round-time-negative"),
    pytest.param(config(round_time="10"), "not a string", id="round-time-quoted"),
    pytest.param(config(round_time=True), "not true or false", id="round-time-bool"),
    pytest.param(config(round_time=10.5), "whole number", id="round-time-fraction"),
    pytest.param(config(round_time=[10]), "field 'round_time'", id="round-time-list"),
    pytest.param(config(round_time=5), "round_time (5) must be at least", id="windows-too-long"),
    pytest.param(
        config(bounty_amount_per_round=2 * 10**6), "must not exceed", id="round-bounty-over-total"
    ),
    pytest.param(config(minimum_stake_amount=-1), "minimum_stake_amount", id="stake-negative"),
    pytest.param(config(total_bounty_amount=0), "total_bounty_amount", id="total-bounty-zero"),
    pytest.param(config(slash_fraction=1.5), "slash_fraction", id="slash-over-one"),
    pytest.param(config(slash_fraction=-0.1), "slash_fraction", id="slash-negative"),
    pytest.param(config(slash_fraction=float("nan")), "slash_fraction", id="slash-nan"),
    pytest.param(config(auditors_per_submission=0), "auditors_per_submission", id="no-auditors"),
    pytest.param(
        config(auditors_per_submission=1000), "auditors_per_submission", id="1000-auditors"
    ),
    pytest.param(config(slot_ms=0), "slot_ms", id="slot-zero"),
    pytest.param(config(slot_ms=10**9), "slot_ms", id="slot-a-billion-ms"),
    pytest.param(config(max_result_bytes=10**12), "max_result_bytes", id="results-a-terabyte"),
    pytest.param(
        config(allowed_failed_distributions=10**9), "allowed_failed", id="a-billion-retries"
    ),
    pytest.param(config(round_tme=10), "did you mean 'round_time'", id="misspelt-field"),
    pytest.param(config() + "r\u043eund_time: 10\n", "unknown field", id="cyrillic-o-in-field"),
    pytest.param(config() + "1: 2\n", "unknown field 1", id="number-as-field"),
    pytest.param(config() + "round_time: 20\n", "is given twice", id="duplicated-field"),
    pytest.param(_laughs(), "more than 10,000 values", id="billion-laughs"),
    pytest.param(config() + "tags: &a [*a]\n", "recursive", id="recursive-alias"),
    pytest.param(
        config() + "tags: " + "[" * 1000 + "]" * 1000 + "\n", "nested too deeply", id="deep"
    ),
    pytest.param(
        config() + "x: !!python/object/apply:os.system [echo owned]\n",
        "not valid YAML",
        id="python-object-tag",
    ),
    pytest.param(config() + "# " + "x" * 300_000 + "\n", "byte limit", id="300-kb-file"),
    pytest.param(config(slot_ms=11), "changed: slot_ms", id="config-changed-under-a-store"),
]


def _dir_with(files: dict[str, str | None]) -> Callable[[Path], str]:
    """A task folder holding ``files`` (None: a folder of that name)."""

    def make(root: Path) -> str:
        folder = root / "task"
        folder.mkdir()
        for name, text in files.items():
            if text is None:
                (folder / name).mkdir()
            else:
                (folder / name).write_text(text, encoding="utf-8")
        return str(folder)

    return make


def _fifo_config(root: Path) -> str:
    folder = Path(_dir_with({"task.py": ECHO_TASK})(root))
    os.mkfifo(folder / "config-task.yml")
    return str(folder)


def _device_config(root: Path) -> str:
    folder = Path(_dir_with({"task.py": ECHO_TASK})(root))
    (folder / "config-task.yml").symlink_to("/dev/zero")
    return str(folder)


def _loop(root: Path) -> str:
    (root / "loop").symlink_to(root / "loop")
    return str(root / "loop")


def _a_file(root: Path) -> str:
    (root / "task.py").write_text(ECHO_TASK, encoding="utf-8")
    return str(root / "task.py")


TASK_FOLDERS: list[ParameterSet] = [
    pytest.param(lambda root: str(root / "nope"), "does not exist", id="missing"),
    pytest.param(_a_file, "is not a directory", id="a-file"),
    pytest.param(_loop, "cannot be resolved", id="symlink-loop"),
    pytest.param(_dir_with({"task.py": ECHO_TASK}), "no such file", id="no-config"),
    pytest.param(
        _dir_with({"task.py": ECHO_TASK, "config-task.yml": None}), "cannot read", id="config-dir"
    ),
    pytest.param(_fifo_config, "not a regular file", id="config-fifo"),
    pytest.param(_device_config, "not a regular file", id="config-dev-zero"),
    pytest.param(_dir_with({"config-task.yml": config()}), "task.py: no such file", id="no-task"),
    pytest.param(
        _dir_with({"config-task.yml": config(), "task.py": None}), "no such file", id="task-dir"
    ),
    pytest.param(
        _dir_with({"config-task.yml": config(), "task.py": "def (:\n"}), "SyntaxError", id="syntax"
    ),
    pytest.param(
        _dir_with({"config-task.yml": config(), "task.py": "raise RuntimeError('boom')\n"}),
        "RuntimeError: boom",
        id="raises-on-import",
    ),
    pytest.param(
        _dir_with({"config-task.yml": config(), "task.py": "import sys\nsys.exit(3)\n"}),
        "SystemExit",
        id="exits-on-import",
    ),
    pytest.param(
        _dir_with({"config-task.yml": config(), "task.py": "import no_such_module\n"}),
        "ModuleNotFoundError",
        id="imports-missing-module",
    ),
    pytest.param(
        _dir_with({"config-task.yml": config(), "task.py": "task = 5\n"}),
        "defines no module-level",
        id="task-is-not-a-task",
    ),
    pytest.param(
        _dir_with(
            {"config-task.yml": config(), "task.py": ECHO_TASK.split("@task.audit", maxsplit=1)[0]}
        ),
        "no audit hook",
        id="no-audit-hook",
    ),
]

_RUN = ["run", "{task}", "--plain", "--store", "{store}"]
_NEW = ["run", "{task}", "--plain", "--store", "{empty}/new"]

ARGUMENTS: list[ParameterSet] = [
    pytest.param([*_RUN, "--nodes", "-1"], "Invalid value for '--nodes'", id="nodes-negative"),
    pytest.param([*_RUN, "--nodes", "1"], "Invalid value for '--nodes'", id="nodes-one"),
    pytest.param([*_RUN, "--nodes", "abc"], "Invalid value for '--nodes'", id="nodes-text"),
    pytest.param([*_RUN, "--nodes", "1e3"], "Invalid value for '--nodes'", id="nodes-float"),
    pytest.param([*_NEW, "--nodes", "9" * 20], "more than a sandbox", id="nodes-huge"),
    pytest.param([*_RUN, "--nodes", "6"], "nodes=4", id="nodes-unlike-the-store"),
    pytest.param([*_RUN, "--seed", "2"], "seed=1", id="seed-unlike-the-store"),
    pytest.param([*_RUN, "--seed", "abc"], "Invalid value for '--seed'", id="seed-text"),
    pytest.param([*_RUN, "--seed", "1.5"], "Invalid value for '--seed'", id="seed-float"),
    pytest.param([*_RUN, "--rounds", "0"], "Invalid value for '--rounds'", id="rounds-zero"),
    pytest.param([*_RUN, "--rounds", "-5"], "Invalid value for '--rounds'", id="rounds-negative"),
    pytest.param(
        [*_RUN, "--rounds", "1" + "0" * 30], "Invalid value for '--rounds'", id="rounds-huge"
    ),
    pytest.param([*_RUN, "--round", "-1"], "Invalid value for '--round'", id="round-negative"),
    pytest.param([*_RUN, "--round", "1" + "0" * 10], "9,999,999,999", id="round-11-digits"),
    pytest.param([*_RUN, "--round", "2" + "0" * 19], "9,999,999,999", id="round-past-u64"),
    pytest.param([*_RUN, "--round", "abc"], "Invalid value for '--round'", id="round-text"),
    pytest.param([*_RUN, "--rounds", "2", "--round", "1"], "not both", id="rounds-and-round"),
    pytest.param([*_RUN, "--adversary", "evil=1"], "is not KIND=COUNT", id="adversary-unknown"),
    pytest.param([*_RUN, "--adversary", "lazy"], "is not KIND=COUNT", id="adversary-no-count"),
    pytest.param([*_RUN, "--adversary", "=1"], "is not KIND=COUNT", id="adversary-no-kind"),
    pytest.param([*_RUN, "--adversary", "lazy=-1"], "is not KIND=COUNT", id="adversary-negative"),
    pytest.param([*_RUN, "--adversary", "lazy=²"], "is not KIND=COUNT", id="adversary-superscript"),
    pytest.param([*_RUN, "--adversary", "lazy=٣"], "is not KIND=COUNT", id="adversary-arabic-3"),
    pytest.param([*_RUN, "--adversary", "lazy=1.5"], "is not KIND=COUNT", id="adversary-float"),
    pytest.param([*_RUN, "--adversary", "LAZY=1"], "is not KIND=COUNT", id="adversary-caps"),
    pytest.param(
        [*_NEW, "--nodes", "3", "--adversary", "lazy=99"], "99 adversaries", id="adversary-99-of-3"
    ),
    pytest.param([*_RUN, "--adversary", "lazy=1"], "adversaries=", id="adversary-unlike-store"),
    pytest.param([*_RUN, "--workers", "0"], "Invalid value for '--workers'", id="workers-zero"),
    pytest.param([*_RUN, "--workers", "-1"], "Invalid value for '--workers'", id="workers-minus"),
    pytest.param(["run", "{task}", "--plain", "--store", "ftp://x"], "unknown store URL", id="ftp"),
    pytest.param(["run", "{task}", "--plain", "--store", "a\x00b"], "NUL byte", id="store-nul"),
    pytest.param(
        ["run", "{task}", "--plain", "--store", "file://a\x00b"], "NUL byte", id="file-url-nul"
    ),
    pytest.param([*_RUN, "--evil"], "No such option", id="unknown-option"),
    pytest.param(["explode"], "No such command", id="unknown-command"),
    pytest.param(["run"], "Missing argument", id="run-without-task"),
    pytest.param(["ledger", "show", "--store", "{empty}"], "no task in", id="show-empty-store"),
    pytest.param(
        ["ledger", "show", "--store", "{store}", "--task", "../../etc"],
        "must be one key segment",
        id="show-task-parent-dirs",
    ),
    pytest.param(
        ["ledger", "show", "--store", "{store}", "--task", "a\x00b"],
        "invalid storage key",
        id="show-task-nul",
    ),
    pytest.param(
        ["ledger", "show", "--store", "{store}", "--task", "a/b"],
        "one key segment",
        id="show-task-slash",
    ),
    pytest.param(
        ["ledger", "show", "--store", "{store}", "--task", "ünïcödé"],
        "invalid storage key",
        id="show-task-unicode",
    ),
    pytest.param(
        ["ledger", "show", "--store", "{store}", "--task", "x" * 600],
        "invalid storage key",
        id="show-task-600-chars",
    ),
    pytest.param(
        ["ledger", "show", "--store", "{store}", "--task", "nope"],
        "no task 'nope'",
        id="show-unknown-task",
    ),
    pytest.param(
        ["ledger", "verify", "--store", "{store}", "--task", "nope"],
        "no task 'nope'",
        id="verify-unknown-task",
    ),
    pytest.param(
        ["ledger", "verify", "--store", "{store}", "--orchestrator", "../x"],
        "is not a public key",
        id="verify-orchestrator-path",
    ),
    pytest.param(
        ["ledger", "verify", "--store", "{store}", "--head", "'; rm -rf /"],
        "is not an entry hash",
        id="verify-head-shell",
    ),
    pytest.param(
        ["rounds", "replay", "--store", "{store}", "--round", "7"],
        "is not settled",
        id="replay-unsettled-round",
    ),
    pytest.param(
        ["rounds", "replay", "--store", "{store}", "--round", "-1"],
        "Invalid value for '--round'",
        id="replay-negative-round",
    ),
    pytest.param(
        ["rounds", "replay", "--store", "{store}", "--task", "{empty}"],
        "no such file",
        id="replay-task-folder-empty",
    ),
    pytest.param(
        ["rounds", "replay", "--store", "{store}", "--task", "../x"],
        "must be one key segment",
        id="replay-task-parent-dir",
    ),
]


def _key_file(doc: Any, *, mode: int = 0o600) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        path = root / "node.json"
        path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
        path.chmod(mode)
        return path

    return make


def _saved(mode: int) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        path = root / "node.json"
        save_key(KEY, path)
        path.chmod(mode)
        return path

    return make


def _fifo_key(root: Path) -> Path:
    os.mkfifo(root / "node.json", 0o600)
    return root / "node.json"


def _symlink(target: Callable[[Path], Path | str]) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        (root / "link.json").symlink_to(target(root))
        return root / "link.json"

    return make


def _save(path: Path) -> None:
    save_key(KEY, path)


_SECRET = encode_b58(bytes(KEY.signing_key))
_KIND = "koiitasks-ed25519-key"

KEY_FILES: list[ParameterSet] = [
    pytest.param(lambda root: root / "absent.json", load_key, "does not exist", id="missing"),
    pytest.param(lambda root: root, load_key, "not a regular file", id="a-folder"),
    pytest.param(_fifo_key, load_key, "not a regular file", id="a-fifo"),
    pytest.param(_symlink(lambda _: "/dev/zero"), load_key, "not a regular file", id="dev-zero"),
    pytest.param(_saved(0o644), load_key, "readable by group or others", id="mode-644"),
    pytest.param(_saved(0o640), load_key, "readable by group or others", id="mode-640"),
    pytest.param(_saved(0o604), load_key, "readable by group or others", id="mode-604"),
    pytest.param(_saved(0o660), load_key, "readable by group or others", id="mode-660"),
    pytest.param(_saved(0o602), load_key, "readable by group or others", id="world-writable"),
    pytest.param(_symlink(_saved(0o644)), load_key, "readable by group", id="link-644"),
    pytest.param(_key_file(b""), load_key, "is malformed", id="empty"),
    pytest.param(_key_file(b"not json"), load_key, "is malformed", id="not-json"),
    pytest.param(_key_file([1, 2]), load_key, "is malformed", id="a-list"),
    pytest.param(_key_file({"kind": _KIND}), load_key, "is malformed", id="no-secret"),
    pytest.param(_key_file({"secret": "0OIl"}), load_key, "is malformed", id="secret-not-b58"),
    pytest.param(_key_file({"secret": "abc"}), load_key, "is malformed", id="secret-3-bytes"),
    pytest.param(
        _key_file({"kind": "solana", "public": KEY.public_id, "secret": _SECRET}),
        load_key,
        "not a koiitasks key file",
        id="other-kind",
    ),
    pytest.param(
        _key_file({"kind": _KIND, "public": Keypair.from_seed(b"x").public_id, "secret": _SECRET}),
        load_key,
        "does not match the secret",
        id="public-of-another-key",
    ),
    pytest.param(_key_file(b" " * 100_000), load_key, "not a key", id="100-kb"),
    pytest.param(lambda root: root / "a\x00b.json", load_key, "cannot read", id="load-nul"),
    pytest.param(_saved(0o600), _save, "already exists", id="save-over-a-key"),
    pytest.param(lambda root: root / "no" / "key.json", _save, "cannot create", id="save-no-dir"),
    pytest.param(lambda root: root / "a\x00b.json", _save, "cannot create", id="save-nul"),
]

NAMES: list[ParameterSet] = [
    pytest.param(name, id=label)
    for label, name in [
        ("parent", ".."),
        ("dot", "."),
        ("parent-then-name", "../x"),
        ("absolute", "/etc/passwd"),
        ("climb-out", "a/../../b"),
        ("climb-out-of-tasks", "tasks/../.."),
        ("nul", "a\x00b"),
        ("backslash", "a\\b"),
        ("windows-path", "C:\\Windows"),
        ("tilde", "~root/x"),
        ("empty", ""),
        ("600-chars", "x" * 600),
        ("hidden", ".hidden"),
        ("unicode", "ünïcödé"),
        ("space", "a b"),
        ("newline", "a\nb"),
        ("percent-encoded", "%2e%2e%2f"),
        ("double-slash", "a//b"),
        ("trailing-slash", "a/"),
        ("right-to-left-override", "a\u202eb"),
    ]
]
