"""A pool of nodes that never answer: for engines that must judge only what the store holds.

A replay runs the round engine over a settled round's records. Any record the store lacks is,
to the engine, a node that did not answer; this pool makes that literal, so the replay reaches
the verdicts the original run reached from the same missing answers, and asks nobody.
"""

# The interface passes what a real pool needs to reach nodes; a pool that never calls has no use
# for most of it.
# ruff: noqa: ARG002

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from koiitasks.distribution import DistributionInputs
from koiitasks.nodes.base import NodePool, Reply
from koiitasks.protocol import AcceptedSubmission, DistributionList, RoundRequest, Signed

SILENT_REASON = "not asked: this engine reads only the store"


class SilentPool(NodePool):
    """Every call returns, at once, one empty reply per node asked."""

    def __init__(self, reason: str = SILENT_REASON) -> None:
        self.reason = reason

    def _none(self, node_ids: Iterable[str]) -> list[Reply]:
        return [Reply(node, None, 0, self.reason) for node in node_ids]

    def execute(self, request: Signed[RoundRequest], node_ids: Sequence[str]) -> list[Reply]:
        return self._none(node_ids)

    def audit(
        self,
        request: Signed[RoundRequest],
        assignments: Mapping[str, Sequence[Signed[AcceptedSubmission]]],
    ) -> list[Reply]:
        return self._none(assignments)

    def build_distribution(
        self, request: Signed[RoundRequest], builder: str, inputs: DistributionInputs, attempt: int
    ) -> Reply:
        return self._none([builder])[0]

    def audit_distribution(
        self,
        request: Signed[RoundRequest],
        auditors: Sequence[str],
        inputs: DistributionInputs,
        distribution: Signed[DistributionList],
    ) -> list[Reply]:
        return self._none(auditors)
