"""Specification of :mod:`koiitasks.audit`: who audits whom, slashes, and counting votes."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koiitasks.audit import (
    Verdict,
    assign_audits,
    audit_ring,
    auditors_of,
    outcome_of,
    slash_amount,
    tally_votes,
)
from koiitasks.identity import Keypair
from koiitasks.model import Outcome
from koiitasks.protocol import AuditReport, Signed, Vote, digest, sign

FAST = settings(max_examples=150, deadline=None, database=None)

TASK = "hash-puzzle"
KEYS = [Keypair.from_seed(f"node-{i}".encode()) for i in range(60)]
NODES = [k.public_id for k in KEYS]
KEY_OF = dict(zip(NODES, KEYS, strict=True))
NONCE = digest(b"audit-nonce")


def _hash_of(node: str) -> str:
    return digest(f"submission of {node}".encode())


def _report(auditor: str, votes: list[Vote], round_number: int = 7) -> Signed[AuditReport]:
    body = AuditReport(
        task_id=TASK, round=round_number, auditor=auditor, nonce=NONCE, votes=tuple(votes)
    )
    return sign(body, KEY_OF[auditor])


def _vote(submitter: str, *, valid: bool, reason: str = "", on: str | None = None) -> Vote:
    return Vote(
        submitter=submitter,
        submission_hash=on if on is not None else _hash_of(submitter),
        valid=valid,
        reason=reason,
    )


class TestAssignAudits:
    """Who audits whom in a round."""

    def test_is_deterministic(self) -> None:
        """The same submitters, task, round and k always give the same assignment."""
        first = assign_audits(NODES[:10], task_id=TASK, round_number=7, k=3)
        assert assign_audits(NODES[:10], task_id=TASK, round_number=7, k=3) == first

    def test_ignores_the_order_and_repeats_of_submitters(self) -> None:
        """Shuffled or repeated submitters give the same assignment."""
        shuffled = NODES[:10] + NODES[:3]
        random.Random(1).shuffle(shuffled)
        assert assign_audits(shuffled, task_id=TASK, round_number=7, k=3) == assign_audits(
            NODES[:10], task_id=TASK, round_number=7, k=3
        )

    def test_the_ring_changes_from_round_to_round(self) -> None:
        """The shuffle depends on task and round, so pairs of auditors do not stay fixed."""
        ring = audit_ring(NODES[:20], task_id=TASK, round_number=7)
        assert sorted(ring) == sorted(NODES[:20])
        assert audit_ring(NODES[:20], task_id=TASK, round_number=8) != ring
        assert audit_ring(NODES[:20], task_id="other-task", round_number=7) != ring

    @pytest.mark.parametrize(
        ("n", "k", "per_submitter"),
        [
            pytest.param(0, 3, 0, id="no-submitters"),
            pytest.param(1, 3, 0, id="a-lone-submitter-has-no-auditor"),
            pytest.param(2, 3, 1, id="two-audit-each-other"),
            pytest.param(4, 3, 3, id="n-is-k-plus-1"),
            pytest.param(10, 3, 3, id="many"),
        ],
    )
    def test_each_submitter_gets_min_k_n_minus_1_auditors(
        self, n: int, k: int, per_submitter: int
    ) -> None:
        """Every submitter is audited by min(k, n - 1) distinct other nodes."""
        assignments = assign_audits(NODES[:n], task_id=TASK, round_number=7, k=k)
        inverse = auditors_of(assignments)
        for submitter in NODES[:n]:
            auditors = inverse.get(submitter, [])
            assert len(auditors) == len(set(auditors)) == per_submitter

    @FAST
    @given(
        n=st.integers(min_value=1, max_value=60),
        k=st.integers(min_value=1, max_value=6),
        round_number=st.integers(min_value=0, max_value=10**6),
    )
    def test_is_fair_for_every_round_size(self, n: int, k: int, round_number: int) -> None:
        """Never self, min(k, n-1) distinct auditors each, and the same load on every auditor."""
        submitters = NODES[:n]
        assignments = assign_audits(submitters, task_id=TASK, round_number=round_number, k=k)
        expected = min(k, n - 1)
        assert set(assignments) <= set(submitters)
        for auditor, audited in assignments.items():
            assert auditor not in audited
            assert len(audited) == len(set(audited)) == expected
        if expected:
            assert set(assignments) == set(submitters)
        inverse = auditors_of(assignments)
        for submitter in submitters:
            auditors = inverse.get(submitter, [])
            assert submitter not in auditors
            assert len(auditors) == len(set(auditors)) == expected
        if n > k:
            assert Counter(len(a) for a in assignments.values()) == Counter({k: n})


class TestAuditorsOf:
    """The inverse view: for each submitter, its auditors."""

    @FAST
    @given(n=st.integers(min_value=0, max_value=30), k=st.integers(min_value=1, max_value=6))
    def test_inverts_assign_audits(self, n: int, k: int) -> None:
        """(auditor, submitter) pairs are the same read either way."""
        assignments = assign_audits(NODES[:n], task_id=TASK, round_number=3, k=k)
        forward = {(a, s) for a, subs in assignments.items() for s in subs}
        backward = {(a, s) for s, auds in auditors_of(assignments).items() for a in auds}
        assert forward == backward

    def test_of_nothing_is_nothing(self) -> None:
        """No assignments means no auditors."""
        assert auditors_of({}) == {}


class TestSlashAmount:
    """How much of a stake an invalid submission costs."""

    @pytest.mark.parametrize(
        ("stake", "fraction", "slashed"),
        [
            pytest.param(10**18, 0.7, 7 * 10**17, id="large-stake-exact"),
            pytest.param(10**27 + 9, 0.7, 7 * 10**26 + 6, id="beyond-float-precision"),
            pytest.param(10, 0.7, 7, id="small"),
            pytest.param(9, 0.7, 6, id="floored"),
            pytest.param(1, 0.7, 0, id="less-than-one-unit"),
            pytest.param(0, 0.7, 0, id="no-stake"),
            pytest.param(10**18, 1.0, 10**18, id="whole-stake"),
            pytest.param(10**18, 0.0, 0, id="no-slash"),
            pytest.param(3 * 10**18, 0.1, 3 * 10**17, id="decimal-fraction"),
        ],
    )
    def test_is_the_exact_floor_of_stake_times_fraction(
        self, stake: int, fraction: float, slashed: int
    ) -> None:
        """slash_amount is floor(stake * fraction) in exact arithmetic, not float arithmetic."""
        assert slash_amount(stake, fraction) == slashed

    @FAST
    @given(
        stake=st.integers(min_value=0, max_value=10**30),
        fraction=st.floats(min_value=0.0, max_value=1.0),
    )
    def test_never_exceeds_the_stake(self, stake: int, fraction: float) -> None:
        """For any fraction in [0, 1] the slash is a whole amount between 0 and the stake."""
        slashed = slash_amount(stake, fraction)
        assert isinstance(slashed, int)
        assert 0 <= slashed <= stake
        assert slashed == int(stake * Fraction(str(fraction)))


class TestVerdict:
    """Majority rules."""

    @pytest.mark.parametrize(
        ("votes_for", "votes_against", "approved", "slashable"),
        [
            pytest.param(2, 1, True, False, id="majority-valid"),
            pytest.param(3, 0, True, False, id="unanimous-valid"),
            pytest.param(1, 0, True, False, id="one-valid-vote"),
            pytest.param(1, 2, False, True, id="majority-invalid"),
            pytest.param(0, 3, False, True, id="unanimous-invalid"),
            pytest.param(1, 1, False, False, id="tie"),
            pytest.param(0, 0, False, False, id="no-votes"),
        ],
    )
    def test_approved_iff_more_for_slashable_iff_more_against(
        self, votes_for: int, votes_against: int, approved: bool, slashable: bool
    ) -> None:
        """More valid votes approves; more invalid slashes; a tie does neither."""
        verdict = Verdict(votes_for=votes_for, votes_against=votes_against)
        assert verdict.approved is approved
        assert verdict.slashable is slashable
        assert outcome_of(verdict) is (Outcome.APPROVED if approved else Outcome.REJECTED)


# Five submitters, two auditors each: every submitter has auditors and non-auditors.
SUBMITTERS = NODES[:5]
ASSIGNMENTS = assign_audits(SUBMITTERS, task_id=TASK, round_number=7, k=2)
AUDITORS_OF = auditors_of(ASSIGNMENTS)
HASHES = {node: _hash_of(node) for node in SUBMITTERS}


class TestTallyVotes:
    """Counting the votes that count."""

    def _tally(self, reports: list[Signed[AuditReport]]) -> dict[str, Verdict]:
        return tally_votes(reports, assignments=ASSIGNMENTS, submission_hashes=HASHES)

    def test_every_submission_has_a_verdict_even_without_votes(self) -> None:
        """With no reports, every submitter has an empty verdict."""
        verdicts = self._tally([])
        assert set(verdicts) == set(SUBMITTERS)
        assert all(v == Verdict() for v in verdicts.values())

    def test_counts_votes_by_assigned_auditors_on_the_exact_hash(self) -> None:
        """Each assigned auditor's vote on the submission it was given is counted once."""
        target = SUBMITTERS[0]
        first, second = AUDITORS_OF[target]
        verdicts = self._tally(
            [
                _report(first, [_vote(target, valid=True)]),
                _report(second, [_vote(target, valid=False, reason="wrong digest")]),
            ]
        )
        assert verdicts[target] == Verdict(votes_for=1, votes_against=1, reasons=["wrong digest"])

    def test_ignores_a_vote_on_a_different_hash(self) -> None:
        """A vote on another version of the submission does not count."""
        target = SUBMITTERS[0]
        auditor = AUDITORS_OF[target][0]
        stale = _vote(target, valid=False, on=digest(b"another submission"))
        assert self._tally([_report(auditor, [stale])])[target] == Verdict()

    def test_ignores_a_vote_by_an_unassigned_auditor(self) -> None:
        """A node that was not asked to audit a submission cannot vote on it."""
        target = SUBMITTERS[0]
        outsider = next(n for n in SUBMITTERS if n != target and n not in AUDITORS_OF[target])
        assert self._tally([_report(outsider, [_vote(target, valid=False)])])[target] == Verdict()

    def test_ignores_a_vote_on_a_node_that_did_not_submit(self) -> None:
        """A vote about a node with no accepted submission is dropped, not an error."""
        auditor = SUBMITTERS[0]
        stranger = NODES[59]
        assignments = {auditor: [stranger]}
        verdicts = tally_votes(
            [_report(auditor, [_vote(stranger, valid=False)])],
            assignments=assignments,
            submission_hashes=HASHES,
        )
        assert stranger not in verdicts

    def test_reasons_are_kept_only_for_invalid_votes(self) -> None:
        """Reasons explain rejections; a reason on a valid vote is not collected."""
        target = SUBMITTERS[1]
        first, second = AUDITORS_OF[target]
        verdicts = self._tally(
            [
                _report(first, [_vote(target, valid=True, reason="looks fine")]),
                _report(second, [_vote(target, valid=False, reason="bad nonce")]),
            ]
        )
        assert verdicts[target].reasons == ["bad nonce"]

    def test_a_majority_of_assigned_auditors_decides(self) -> None:
        """Two assigned auditors voting invalid make a submission slashable."""
        target = SUBMITTERS[2]
        reports = [_report(a, [_vote(target, valid=False)]) for a in AUDITORS_OF[target]]
        verdict = self._tally(reports)[target]
        assert verdict.slashable
        assert not verdict.approved

    def test_an_auditor_repeating_its_vote_counts_once(self) -> None:
        """An assigned auditor has one vote per submission however often it repeats it."""
        target = SUBMITTERS[3]
        honest, dishonest = AUDITORS_OF[target]
        verdicts = self._tally(
            [
                _report(honest, [_vote(target, valid=True)]),
                _report(dishonest, [_vote(target, valid=False)] * 3),
            ]
        )
        assert verdicts[target].votes_against == 1
        assert not verdicts[target].slashable
