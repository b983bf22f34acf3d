"""Specifications of tracing one node through a round: `run --trace` and `koiitasks trace`."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import pytest

from koiitasks.errors import ConfigError
from koiitasks.sandbox import Sandbox
from koiitasks.testing import sandbox
from koiitasks.trace import NodeTrace, TraceEvent, resolve_node, trace_node
from tests.conftest import HASH_PUZZLE, koiitasks
from tests.test_cli import json_lines

ADVERSARIES = {"lazy": 1, "forger": 1, "offline": 1, "bad-auditor": 1}


@pytest.fixture(scope="module")
def ran() -> Sandbox:
    """Two rounds of the hash puzzle on 12 nodes, four of them misbehaving."""
    box = sandbox(HASH_PUZZLE, nodes=12, seed=5, adversaries=ADVERSARIES)
    for n in range(2):
        box.run_round(n)
    box.close()
    return box


def trace_of(box: Sandbox, behaviour: str, round_number: int = 1) -> NodeTrace:
    node = resolve_node(box.network.behaviours(), behaviour)
    return trace_node(box.store, box.loaded.task_id, round_number, node)


def kind_of(box: Sandbox, vote: TraceEvent) -> str:
    """The behaviour of the auditor that cast a traced vote."""
    return box.network.behaviours()[str(vote.data["auditor"])]


def records(path: NodeTrace) -> list[str]:
    return [e.record for e in path.events]


class TestTraceNode:
    """What the trace of one node in one round holds, from the store's records."""

    def test_an_honest_node_from_request_to_payment(self, ran: Sandbox) -> None:
        """Registration, request, accepted submission, counted valid votes, its own report,
        the list that credits it, and the ledger line with the same credit."""
        path = trace_of(ran, "honest")
        kinds = records(path)
        assert kinds[:3] == ["registration", "request", "submission"]
        assert kinds[-1] == "ledger"
        votes = [e for e in path.events if e.record == "vote"]
        assert len(votes) == 3
        assert all(v.data["counted"] is True for v in votes)
        assert all(v.data["valid"] is True for v in votes if kind_of(ran, v) == "honest")
        listed = next(e for e in path.events if e.record == "distribution")
        ledger = path.events[-1]
        credit = ledger.data["credit"]
        assert isinstance(credit, int)
        assert credit > 0
        assert listed.data["credit"] == credit
        submission = path.events[2]
        assert submission.slot == submission.data["received_slot"]
        assert submission.key is not None
        assert submission.key.endswith(f"submissions/{path.node_id}.json")

    def test_a_lazy_node_shows_the_invalid_votes_and_the_slash(self, ran: Sandbox) -> None:
        """Its submission was accepted, every counted vote on it says invalid with the reason,
        and the ledger line slashes it and credits nothing."""
        path = trace_of(ran, "lazy")
        votes = [e for e in path.events if e.record == "vote" and kind_of(ran, e) == "honest"]
        assert votes
        assert all(v.data["valid"] is False and v.data["counted"] for v in votes)
        assert all("audit hook returned False" in v.text for v in votes)
        ledger = path.events[-1]
        assert ledger.data["credit"] == 0
        assert isinstance(ledger.data["slash"], int)
        assert ledger.data["slash"] > 0

    def test_a_forger_shows_the_refusal_and_its_reason(self, ran: Sandbox) -> None:
        """No submission: the refusal record with the ingest reason instead, and no votes."""
        path = trace_of(ran, "forger")
        refusal = next(e for e in path.events if e.record == "refusal")
        assert "forged" in refusal.text
        assert "submission" not in records(path)
        assert "vote" not in records(path)

    def test_an_offline_node_shows_that_nothing_came(self, ran: Sandbox) -> None:
        """No record of an answer at all: a `missing` line that says what that can mean."""
        path = trace_of(ran, "offline")
        missing = next(e for e in path.events if e.record == "missing")
        assert missing.key is None
        assert "no answer" in missing.text

    def test_a_bad_auditor_shows_the_votes_it_cast(self, ran: Sandbox) -> None:
        """Its audit report is in the trace with its votes: each the opposite of the truth."""
        path = trace_of(ran, "bad-auditor")
        report = next(e for e in path.events if e.record == "audit-report")
        votes = report.data["votes"]
        assert isinstance(votes, list)
        assert votes
        kinds = ran.network.behaviours()
        for vote in votes:
            assert isinstance(vote, dict)
            assert vote["valid"] is (kinds[str(vote["submitter"])] == "lazy")

    def test_a_round_that_never_ran_is_an_error_not_an_empty_trace(self, ran: Sandbox) -> None:
        """Tracing a round with no record at all says so, with the last settled round, rather
        than explaining the node as missing."""
        node = resolve_node(ran.network.behaviours(), "honest")
        with pytest.raises(ConfigError, match=r"round 99 of task .* never ran") as caught:
            trace_node(ran.store, ran.loaded.task_id, 99, node)
        assert "the last settled is round 1" in caught.value.message

    def test_text_and_json_lines_carry_every_record(self, ran: Sandbox) -> None:
        """lines() has a heading and one line per record; json_lines() one object per record,
        each marked as a trace of this node and round."""
        path = trace_of(ran, "lazy", 0)
        assert path.lines()[0].startswith(f"trace of node {path.node_id} (lazy), round 0")
        assert len(path.lines()) == len(path.events) + 1
        objects = [json.loads(line) for line in path.json_lines()]
        assert [o["record"] for o in objects] == records(path)
        assert {(o["kind"], o["node_id"], o["round"]) for o in objects} == {
            ("trace", path.node_id, 0)
        }


BEHAVIOURS = MappingProxyType(
    {
        "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin": "honest",
        "9xQfYD2abXs6iP9KZf3mUkUqvQhPpjRJbqn3mg1FfbBa": "lazy",
        "4zMMC9srt5Ri5X14GAgXhaHii3GnPAEERYPJgZJDncDU": "honest",
    }
)


class TestResolveNode:
    """Which node a `--trace` argument names."""

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            pytest.param("lazy", "9xQfYD2abXs6iP9KZf3mUkUqvQhPpjRJbqn3mg1FfbBa", id="behaviour"),
            pytest.param(
                "honest", "4zMMC9srt5Ri5X14GAgXhaHii3GnPAEERYPJgZJDncDU", id="behaviour-first-id"
            ),
            pytest.param("4z", "4zMMC9srt5Ri5X14GAgXhaHii3GnPAEERYPJgZJDncDU", id="unique-prefix"),
            pytest.param(
                "9xQf", "9xQfYD2abXs6iP9KZf3mUkUqvQhPpjRJbqn3mg1FfbBa", id="longer-prefix"
            ),
        ],
    )
    def test_a_behaviour_or_a_unique_prefix_names_one_node(self, query: str, expected: str) -> None:
        """A behaviour names its first node by id; a prefix names the one node it starts."""
        assert resolve_node(BEHAVIOURS, query) == expected

    @pytest.mark.parametrize(
        ("query", "message"),
        [
            pytest.param("9xQ", "'9xQ' matches 2 nodes", id="ambiguous-prefix"),
            pytest.param("zzz", "no node of this network matches 'zzz'", id="unknown"),
            pytest.param("forger", "no node of this network matches", id="absent-behaviour"),
        ],
    )
    def test_an_ambiguous_or_unknown_name_is_an_error(self, query: str, message: str) -> None:
        """The error says what matched, or how to name a node."""
        with pytest.raises(ConfigError, match=message) as caught:
            resolve_node(BEHAVIOURS, query)
        assert caught.value.hint


class TestTraceCommands:
    """`koiitasks run --trace NODE` and `koiitasks trace NODE`."""

    def test_run_trace_prints_each_rounds_records_of_the_node(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """After each round's summary come the traced node's records, readable; with --json
        the trace is JSON lines marked "kind": "trace" after the round's own line."""
        base = ("run", str(HASH_PUZZLE), "--plain", "--trace", "lazy")
        proc = koiitasks(
            *base, "--nodes", "6", "--rounds", "2", "--seed", "2", "--adversary", "lazy=1",
            env=cli_env, cwd=tmp_path, check=True,
        )  # fmt: skip
        lines = proc.stdout.splitlines()
        headings = [i for i, line in enumerate(lines) if line.startswith("trace of node")]
        assert len(headings) == 2
        assert lines[headings[0] - 1].startswith("round 0:")
        assert "(lazy), round 1" in lines[headings[1]]
        assert any("voted invalid" in line for line in lines)
        proc = koiitasks(*base, "--json", env=cli_env, cwd=tmp_path, check=True)
        objects = json_lines(proc.stdout)
        assert "kind" not in objects[0]
        assert objects[0]["round"] == 2
        assert {o["kind"] for o in objects[1:]} == {"trace"}
        assert objects[-1]["record"] == "ledger"

    def test_trace_command_reads_a_round_that_already_ran(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """`koiitasks trace NODE` traces the last settled round, `--round N` another."""
        koiitasks(
            "run", str(HASH_PUZZLE), "--plain", "--nodes", "5", "--rounds", "2",
            "--adversary", "offline=1", env=cli_env, cwd=tmp_path, check=True,
        )  # fmt: skip
        last = koiitasks("trace", "offline", "--json", env=cli_env, cwd=tmp_path, check=True)
        assert {o["round"] for o in json_lines(last.stdout)} == {1}
        first = koiitasks("trace", "offline", "--round", "0", env=cli_env, cwd=tmp_path)
        assert first.returncode == 0
        assert "(offline), round 0" in first.stdout
        assert "no answer stored" in first.stdout

    def test_an_unknown_node_exits_2_with_a_hint(
        self, cli_env: dict[str, str], tmp_path: Path
    ) -> None:
        """Naming no node of the network is a usage error, never a traceback."""
        proc = koiitasks(
            "run", str(HASH_PUZZLE), "--plain", "--nodes", "3", "--trace", "zzz",
            env=cli_env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 2
        assert "no node of this network matches 'zzz'" in proc.stderr
        assert "Traceback" not in proc.stderr
