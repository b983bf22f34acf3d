"""The node-pool interface and the reply it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from koiitasks.distribution import DistributionInputs
from koiitasks.protocol import (
    AcceptedSubmission,
    DistributionList,
    RoundRequest,
    Signed,
)


@dataclass(frozen=True)
class Reply:
    """What came back from one node: raw bytes to be checked, or why nothing came."""

    node_id: str
    data: bytes | None
    received_ms: int
    error: str = ""


class NodePool(ABC):
    """Sends the orchestrator's requests to nodes and returns their raw replies."""

    @abstractmethod
    def execute(self, request: Signed[RoundRequest], node_ids: Sequence[str]) -> list[Reply]:
        """Ask each node to execute the round; one reply per node, in any order."""

    @abstractmethod
    def audit(
        self,
        request: Signed[RoundRequest],
        assignments: Mapping[str, Sequence[Signed[AcceptedSubmission]]],
    ) -> list[Reply]:
        """Ask each auditor to vote on the submissions assigned to it."""

    @abstractmethod
    def build_distribution(
        self, request: Signed[RoundRequest], builder: str, inputs: DistributionInputs, attempt: int
    ) -> Reply:
        """Ask the chosen builder for the round's distribution list."""

    @abstractmethod
    def audit_distribution(
        self,
        request: Signed[RoundRequest],
        auditors: Sequence[str],
        inputs: DistributionInputs,
        distribution: Signed[DistributionList],
    ) -> list[Reply]:
        """Ask each list auditor to recompute and vote on the list."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""
