"""What one node does: check the orchestrator's request, run the task's hooks, sign the answer.

The same runtime serves simulated nodes in the sandbox and ``koiitasks node serve`` processes,
so a task behaves the same in both. A hook that raises is logged with the node and round; the
node then has no answer (execute) or casts no vote (audit), and the round goes on.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence

from pydantic import JsonValue

from koiitasks.clock import Schedule, SlotClock
from koiitasks.distribution import DistributionInputs, check_credits, default_distribute
from koiitasks.errors import KoiiTasksError, RecordError, SignatureError
from koiitasks.identity import Keypair
from koiitasks.nodes.failures import report_hook_failure
from koiitasks.protocol import (
    MAX_RESULT_DEPTH,
    AcceptedSubmission,
    AuditReport,
    DistributionAudit,
    DistributionList,
    RoundRequest,
    Signed,
    Submission,
    sign,
)
from koiitasks.task import Context, LoadedTask, NodeStore, SubmissionView

log = logging.getLogger("koiitasks.node")


class HookFailed(KoiiTasksError):  # noqa: N818 - reads as what happened
    """A task hook raised or returned something unusable.

    ``hook``, ``node_id`` and ``round_number`` say where; the hook's own exception, when it
    raised one, is ``__cause__`` (:mod:`koiitasks.nodes.failures` shows its task frames).
    """

    def __init__(
        self,
        message: str,
        *,
        hook: str = "",
        node_id: str = "",
        round_number: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.hook = hook
        self.node_id = node_id
        self.round_number = round_number


#: What an execute hook may return, as its error says.
JSON_TYPES = "dicts with string keys, lists, strings, numbers, True, False or None"


def json_problem(value: object) -> str | None:
    """Why ``value`` is not strict JSON in UTF-8, or None when it is.

    A result must be: canonical() would quietly write NaN as null (changing the result),
    ``json`` would turn integer keys into strings and tuples into lists, and a lone surrogate
    cannot be encoded at all.
    """
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except RecursionError:  # thousands of levels: what _shape_problem says of over a hundred
        return _TOO_DEEP
    except TypeError as e:  # "Object of type set is not JSON serializable"
        return f"a value that is not JSON ({e})"
    except UnicodeEncodeError:
        return "text that is not UTF-8 (a lone surrogate)"
    except ValueError:
        return "NaN or an infinity, which JSON cannot hold"
    return _shape_problem(value)


_TOO_DEEP = f"lists or dicts nested deeper than {MAX_RESULT_DEPTH} levels"


def _shape_problem(value: object, depth: int = 1) -> str | None:
    """What ``json`` would have changed silently (a key that is not a string, a tuple), or
    nesting a record could not be read back with. Called once ``json`` encoded ``value``, so
    the recursion stops well short of Python's limit (at ``MAX_RESULT_DEPTH`` + 1)."""
    if isinstance(value, dict | list | tuple) and depth > MAX_RESULT_DEPTH:
        return _TOO_DEEP
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"a dict with the {type(key).__name__} key {key!r} (JSON keys are strings)"
            if (problem := _shape_problem(item, depth + 1)) is not None:
                return problem
    elif isinstance(value, tuple):
        return "a tuple (JSON has lists: return a list)"
    elif isinstance(value, list):
        for item in value:
            if (problem := _shape_problem(item, depth + 1)) is not None:
                return problem
    return None


def hook_errors() -> tuple[type[BaseException], ...]:
    """What a hook may raise that is its own failure, not the run's end: any exception,
    ``sys.exit()``, and off the main thread ``KeyboardInterrupt`` (a real Ctrl-C reaches only
    the main thread, where it must still stop the run)."""
    if threading.current_thread() is threading.main_thread():
        return (Exception, SystemExit)
    return (Exception, SystemExit, KeyboardInterrupt)


def failure(error: BaseException) -> str:
    """A hook's failure in a few words."""
    if isinstance(error, SystemExit):
        return f"called sys.exit({error.code!r}) (a hook cannot end the run: raise an exception)"
    return f"{type(error).__name__}: {error}"


class NodeRuntime:
    """One node's identity, task and store."""

    def __init__(
        self,
        loaded: LoadedTask,
        keypair: Keypair,
        *,
        schedule: Schedule,
        slot_clock: SlotClock,
        orchestrator: str | None = None,
    ) -> None:
        self.loaded = loaded
        self.keypair = keypair
        self.node_id = keypair.public_id
        self.schedule = schedule
        self.slot_clock = slot_clock
        self.orchestrator = orchestrator
        self.store = NodeStore()
        self.log = logging.getLogger(f"koiitasks.task.{loaded.task_id}")
        #: Called with every hook failure this node survives (an audit vote left out); the
        #: simulated pool replaces it to report a failure once per round, not once per node.
        self.on_hook_failure: Callable[[HookFailed], None] = report_hook_failure

    def _failed(self, hook: str, round_number: int, message: str) -> HookFailed:
        return HookFailed(message, hook=hook, node_id=self.node_id, round_number=round_number)

    def context(self, round_number: int, slot_clock: SlotClock | None = None) -> Context:
        return Context(
            task_id=self.loaded.task_id,
            round=round_number,
            node_id=self.node_id,
            config=self.loaded.config,
            slot_clock=slot_clock or self.slot_clock,
            schedule=self.schedule,
            store=self.store,
            log=self.log,
        )

    def check_request(self, request: Signed[RoundRequest]) -> None:
        """Refuse a request not signed by this task's orchestrator, or for another task."""
        if self.orchestrator is not None and request.signer != self.orchestrator:
            raise SignatureError(f"request signed by {request.signer}, not the orchestrator")
        request.verify()
        if request.body.task_id != self.loaded.task_id:
            raise RecordError(f"request is for task {request.body.task_id!r}")

    # --- execute ---------------------------------------------------------------------------

    def run_execute(self, round_number: int, slot_clock: SlotClock | None = None) -> JsonValue:
        """Run the execute hook; raise :class:`HookFailed` naming the node and round."""
        self.loaded.task.ensure_setup()
        hook = self.loaded.task.execute_hook
        assert hook is not None  # load_task refuses a task without one
        try:
            result = hook(self.context(round_number, slot_clock))
        except hook_errors() as e:
            raise self._failed(
                "execute",
                round_number,
                f"execute hook failed on node {self.node_id} in round {round_number}: {failure(e)}",
            ) from e
        problem = json_problem(result)
        if problem is not None:  # no traceback: it would show only the json module's frames
            raise self._failed(
                "execute",
                round_number,
                f"execute hook on node {self.node_id} in round {round_number} returned {problem};"
                f" return JSON: {JSON_TYPES}",
            )
        return result

    def sign_submission(
        self, request: Signed[RoundRequest], result: JsonValue, response_slot: int
    ) -> Signed[Submission]:
        body = request.body
        return sign(
            Submission(
                task_id=body.task_id,
                round=body.round,
                node_id=self.node_id,
                request_slot=body.request_slot,
                response_slot=response_slot,
                nonce=body.nonce,
                result=result,
            ),
            self.keypair,
        )

    def execute(
        self, request: Signed[RoundRequest], *, slot_clock: SlotClock | None = None
    ) -> Signed[Submission]:
        """Answer an execute request with a signed submission stamped with the answer's slot."""
        self.check_request(request)
        clock = slot_clock or self.slot_clock
        result = self.run_execute(request.body.round, clock)
        return self.sign_submission(request, result, clock.get_slot())

    # --- audit -----------------------------------------------------------------------------

    def judge(
        self, record: Signed[AcceptedSubmission], round_number: int, ctx: Context | None = None
    ) -> tuple[bool, str]:
        """This node's honest verdict on one accepted submission, or raise :class:`HookFailed`.

        ``ctx`` is the hook's context for the round, when the caller made one already."""
        submission = record.body.submission
        try:
            submission.verify()
        except SignatureError:
            return False, "submission signature does not verify"
        if submission.signer != submission.body.node_id or submission.body.round != round_number:
            return False, "submission is not the submitter's own for this round"
        body = record.body
        view = SubmissionView(
            node_id=body.node_id,
            round=round_number,
            result=submission.body.result,
            request_slot=submission.body.request_slot,
            response_slot=submission.body.response_slot,
            completion_slots=body.completion_slots,
            completion_ms=body.completion_ms,
        )
        hook = self.loaded.task.audit_hook
        assert hook is not None
        try:
            verdict = hook(ctx or self.context(round_number), view)
        except hook_errors() as e:
            raise self._failed(
                "audit",
                round_number,
                f"audit hook failed on node {self.node_id} auditing {body.node_id} "
                f"in round {round_number}: {failure(e)}",
            ) from e
        if not isinstance(verdict, bool):
            raise self._failed(
                "audit",
                round_number,
                f"audit hook on node {self.node_id} returned {type(verdict).__name__}, not bool",
            )
        return verdict, "" if verdict else "audit hook returned False"

    def audit(
        self,
        request: Signed[RoundRequest],
        records: Sequence[Signed[AcceptedSubmission]],
        *,
        flip: bool = False,
    ) -> Signed[AuditReport]:
        """Vote on each assigned submission; a hook failure leaves that vote out."""
        from koiitasks.protocol import Vote  # noqa: PLC0415 - keeps the import list short

        self.check_request(request)
        self.loaded.task.ensure_setup()
        votes = []
        ctx = self.context(request.body.round)  # one context (immutable) for every vote
        for record in records:
            try:
                valid, reason = self.judge(record, request.body.round, ctx)
            except HookFailed as e:
                self.on_hook_failure(e)
                continue
            if flip:
                valid, reason = not valid, "" if valid else "voted against"
            votes.append(
                Vote(
                    submitter=record.body.node_id,
                    submission_hash=record.body.submission.hash,
                    valid=valid,
                    reason=reason,
                )
            )
        body = request.body
        report = AuditReport(
            task_id=body.task_id,
            round=body.round,
            auditor=self.node_id,
            nonce=body.nonce,
            votes=tuple(votes),
        )
        return sign(report, self.keypair)

    # --- distribution ----------------------------------------------------------------------

    def compute_credits(self, inputs: DistributionInputs) -> dict[str, int]:
        """Run the distribute hook (or the default equal split) on the inputs."""
        hook = self.loaded.task.distribute_hook
        if hook is None:
            return default_distribute(inputs)
        try:
            credits = hook(self.context(inputs.round), inputs.views(), inputs.bounty)
        except hook_errors() as e:
            raise self._failed(
                "distribute",
                inputs.round,
                f"distribute hook failed on node {self.node_id} in round {inputs.round}: "
                f"{failure(e)}",
            ) from e
        reason = check_credits(credits, inputs)
        if reason is not None and _representable(credits):
            return dict(credits)  # sign it anyway: auditors reject it with the reason
        if reason is not None:
            raise self._failed(
                "distribute", inputs.round, f"{reason} (node {self.node_id}, round {inputs.round})"
            )
        return dict(credits)

    def build_distribution(
        self, request: Signed[RoundRequest], inputs: DistributionInputs, attempt: int
    ) -> Signed[DistributionList]:
        self.check_request(request)
        credits = self.compute_credits(inputs)
        return sign(
            DistributionList(
                task_id=inputs.task_id,
                round=inputs.round,
                attempt=attempt,
                builder=self.node_id,
                bounty=inputs.bounty,
                credits=credits,
                slashes=dict(inputs.slashes),
                inputs_hash=inputs.hash,
            ),
            self.keypair,
        )

    def judge_distribution(
        self, inputs: DistributionInputs, distribution: Signed[DistributionList]
    ) -> tuple[bool, str]:
        """Recompute the list and compare it exactly; check the rules."""
        body = distribution.body
        try:
            distribution.verify()
        except SignatureError:
            return False, "list signature does not verify"
        if body.builder != distribution.signer or body.inputs_hash != inputs.hash:
            return False, "list was not built by its signer from this round's inputs"
        if body.bounty != inputs.bounty or body.slashes != inputs.slashes:
            return False, "list's bounty or slashes differ from this round's"
        reason = check_credits(body.credits, inputs)
        if reason is not None:
            return False, reason
        try:
            expected = self.compute_credits(inputs)
        except HookFailed as e:
            return False, str(e)
        if expected != body.credits:
            return False, "recomputed credits differ from the list"
        return True, ""

    def audit_distribution(
        self,
        request: Signed[RoundRequest],
        inputs: DistributionInputs,
        distribution: Signed[DistributionList],
        *,
        flip: bool = False,
    ) -> Signed[DistributionAudit]:
        self.check_request(request)
        valid, reason = self.judge_distribution(inputs, distribution)
        if flip:
            valid, reason = not valid, "" if valid else "voted against"
        return sign(
            DistributionAudit(
                task_id=inputs.task_id,
                round=inputs.round,
                attempt=distribution.body.attempt,
                auditor=self.node_id,
                distribution_hash=distribution.hash,
                valid=valid,
                reason=reason,
            ),
            self.keypair,
        )


def _representable(credits: object) -> bool:
    """Whether a hook's output can be put in a signed list at all (str keys, int values)."""
    return isinstance(credits, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in credits.items()
    )
