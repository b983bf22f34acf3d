"""Specification of :class:`koiitasks.round_result.RoundResult`'s report: what `koiitasks run`
prints under each round's line."""

from __future__ import annotations

from koiitasks.model import Outcome
from koiitasks.round_result import REASONS_LISTED, NodeResult, RoundResult


def refused(reason: str) -> NodeResult:
    return NodeResult(behaviour="honest", outcome=Outcome.REFUSED, credit=0, slash=0, reason=reason)


def settled(nodes: dict[str, NodeResult], *, already_settled: bool = False) -> RoundResult:
    return RoundResult(
        task_id="hash-puzzle",
        round=3,
        bounty=1_000,
        distribution_accepted=True,
        attempts=1,
        already_settled=already_settled,
        sequence=3,
        ledger_hash="0" * 64,
        reasons=[],
        nodes=nodes,
    )


PAID = NodeResult(behaviour="honest", outcome=Outcome.APPROVED, credit=1_000, slash=0)


class TestReport:
    """The round's line, then why answers were refused."""

    def test_a_round_with_no_refusal_is_its_summary_alone(self) -> None:
        """Nothing is added under a round whose answers were all taken."""
        result = settled({"a": PAID})
        assert result.report() == result.summary()

    def test_refusals_are_counted_by_reason_commonest_first(self) -> None:
        """Each reason is one line with how many answers it refused, the commonest first."""
        big = "result is 10000448 bytes, over max_result_bytes 65536"
        late = "answer came at slot 140, after the submission window closed at slot 139 (late)"
        nodes = {"a": PAID, "b": refused(late), "c": refused(big), "d": refused(big)}
        lines = settled(nodes).report().splitlines()
        assert lines[1:] == [f"  - 2 refused: {big}", f"  - 1 refused: {late}"]

    def test_past_the_listed_reasons_the_rest_are_summed_up(self) -> None:
        """However many reasons there are, the report stays a few lines long."""
        count = REASONS_LISTED + 3
        nodes = {f"n{i}": refused(f"reason {i}") for i in range(count)}
        lines = settled(nodes).report().splitlines()
        assert len(lines) == 1 + REASONS_LISTED + 1
        assert lines[-1] == (
            "  - 3 more refused or missing for 3 other reasons (koiitasks trace NODE shows each)"
        )

    def test_missing_nodes_are_explained_when_more_is_known_than_silence(self) -> None:
        """A node whose connection was refused is listed with that reason; a node that simply
        did not answer adds nothing, as the round's line already counts it."""
        down = "All connection attempts failed (is `koiitasks node serve` running there?)"
        nodes = {
            "a": PAID,
            "b": NodeResult(behaviour="honest", outcome=Outcome.MISSING, credit=0, slash=0,
                            reason=down),
            "c": NodeResult(behaviour="offline", outcome=Outcome.MISSING, credit=0, slash=0,
                            reason="no answer"),
        }  # fmt: skip
        assert settled(nodes).report().splitlines()[1:] == [f"  - 1 missing: {down}"]

    def test_a_round_settled_before_says_nothing_more(self) -> None:
        """Asking for a settled round again changes nothing and reports nothing new."""
        result = settled({"a": refused("late")}, already_settled=True)
        assert result.report() == result.summary()
