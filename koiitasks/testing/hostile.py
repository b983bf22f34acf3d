"""Nodes that answer with whatever bytes a test chooses, for hostile-input specifications.

A :class:`HostilePool` wraps a sandbox's simulated pool. For the nodes and phases it is given,
it replaces each answer by what an answer function makes of the call: garbage, a record signed
by the wrong key, one for another round, one far too big... The round engine then checks those
bytes exactly as it checks any stranger's on the network::

    from koiitasks.testing.hostile import HostilePool, resign

    box = sandbox("path/to/task", nodes=6)
    node = sorted(box.network.nodes)[0]
    HostilePool.install(box.engine, {node: {"execute": lambda call: b"{}"}})
    result = box.run_round(0)      # the node is refused, with the reason stored

:func:`resign` builds the common case: the node's honest answer with some fields changed,
validly signed by the node's own key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from koiitasks.distribution import DistributionInputs
from koiitasks.nodes.base import NodePool, Reply
from koiitasks.nodes.sim import SimulatedPool
from koiitasks.protocol import (
    AcceptedSubmission,
    AuditReport,
    Body,
    DistributionAudit,
    DistributionList,
    RoundRequest,
    Signed,
    Submission,
    decode,
    sign,
)
from koiitasks.round import RoundEngine

Phase = Literal["execute", "audit", "distribution", "distribution-audit"]
BODY_OF: dict[str, type[Body]] = {
    "execute": Submission,
    "audit": AuditReport,
    "distribution": DistributionList,
    "distribution-audit": DistributionAudit,
}


@dataclass(frozen=True)
class Call:
    """One call to a hostile node: what it was asked and what it would honestly have said."""

    phase: Phase
    node_id: str
    request: Signed[RoundRequest]
    honest: bytes | None
    pool: SimulatedPool

    def record(self) -> Signed[Any]:
        """The honest answer, decoded."""
        assert self.honest is not None, f"node {self.node_id} had no honest answer to change"
        return decode(self.honest, BODY_OF[self.phase], where=self.node_id, check_signature=False)


Answer = Callable[[Call], bytes | None]


def resign(call: Call, **changes: Any) -> bytes:
    """The honest answer with ``changes`` to its body, signed by the node's own key."""
    body = call.record().body.model_copy(update=changes)
    return sign(body, call.pool.runtimes[call.node_id].keypair).encode()


class HostilePool(NodePool):
    """``inner``, except that ``answers[node][phase]`` decides what that node says."""

    def __init__(self, inner: SimulatedPool, answers: Mapping[str, Mapping[Phase, Answer]]) -> None:
        self.inner = inner
        self.answers = {node: dict(phases) for node, phases in answers.items()}

    @classmethod
    def install(
        cls, engine: RoundEngine, answers: Mapping[str, Mapping[Phase, Answer]]
    ) -> HostilePool:
        """Put a hostile pool around ``engine``'s simulated pool, in its place."""
        if not isinstance(engine.pool, SimulatedPool):
            raise TypeError(
                f"a HostilePool wraps a SimulatedPool, not {type(engine.pool).__name__}"
            )
        pool = cls(engine.pool, answers)
        engine.pool = pool
        return pool

    def _swap(
        self, phase: Phase, request: Signed[RoundRequest], replies: list[Reply]
    ) -> list[Reply]:
        swapped = []
        for reply in replies:
            answer = self.answers.get(reply.node_id, {}).get(phase)
            if answer is None:
                swapped.append(reply)
                continue
            call = Call(phase, reply.node_id, request, reply.data, self.inner)
            data = answer(call)
            swapped.append(replace(reply, data=data, error="" if data is not None else "hostile"))
        return swapped

    def execute(self, request: Signed[RoundRequest], node_ids: Sequence[str]) -> list[Reply]:
        return self._swap("execute", request, self.inner.execute(request, node_ids))

    def audit(
        self,
        request: Signed[RoundRequest],
        assignments: Mapping[str, Sequence[Signed[AcceptedSubmission]]],
    ) -> list[Reply]:
        return self._swap("audit", request, self.inner.audit(request, assignments))

    def build_distribution(
        self, request: Signed[RoundRequest], builder: str, inputs: DistributionInputs, attempt: int
    ) -> Reply:
        reply = self.inner.build_distribution(request, builder, inputs, attempt)
        return self._swap("distribution", request, [reply])[0]

    def audit_distribution(
        self,
        request: Signed[RoundRequest],
        auditors: Sequence[str],
        inputs: DistributionInputs,
        distribution: Signed[DistributionList],
    ) -> list[Reply]:
        replies = self.inner.audit_distribution(request, auditors, inputs, distribution)
        return self._swap("distribution-audit", request, replies)

    def close(self) -> None:
        self.inner.close()
