"""Kill a real ``koiitasks`` process with SIGKILL at a chosen write, many times, quickly.

Every record a store makes durable passes through one system call: the file store writes a
temporary file and hard-links it to its key (``os.link``), so a kill *before* the link leaves a
written but unnamed record (the crash between write and rename), and a kill *after* it leaves
the record named but not yet flushed to its folder. A :class:`KillPoint` names such a moment by
the key's pattern, which match it is, and the side of the link.

Starting Python and importing koiitasks costs about half a second, so a :class:`CrashLab` starts
one warm parent process that has imported the command line, and *forks* a fresh child for each
command: a real process with its own memory, running ``koiitasks ARGS`` exactly as the console
script does, with the kill point armed in it. The child's own code sends it SIGKILL, the one
signal it cannot catch, clean up after or outlive::

    with CrashLab() as lab:
        ending = lab.run(["run", task, "--plain", "--store", store],
                         kill=KillPoint("*/ledger/*.json", when="before"))
        assert ending.killed

The parent is single-threaded when it forks, so children start clean. POSIX only.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Self

When = Literal["before", "after"]


@dataclass(frozen=True)
class KillPoint:
    """The ``nth`` link to a path matching ``pattern`` (fnmatch, ``*`` spans ``/``), killed
    ``before`` or ``after`` the link is made."""

    pattern: str
    nth: int = 1
    when: When = "before"


@dataclass(frozen=True)
class Ending:
    """How a child ended: an exit code, or the signal that killed it."""

    exit_code: int | None
    signal: int | None
    output: str

    @property
    def killed(self) -> bool:
        return self.signal == signal.SIGKILL


class CrashLab:
    """A warm parent process that forks one ``koiitasks`` child per :meth:`run`."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "koiitasks.testing.crash"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ if env is None else env),
        )
        if self._readline() != {"ready": True}:  # pragma: no cover - the import failed
            raise RuntimeError("the crash lab's parent process did not start")

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path | str,
        kill: KillPoint | None = None,
        journal: Path | None = None,
    ) -> Ending:
        """Run ``koiitasks ARGS`` in a new child; ``journal`` gets every linked path, in order."""
        request = {
            "args": list(args),
            "cwd": str(cwd),
            "kill": asdict(kill) if kill else None,
            "journal": str(journal) if journal else None,
        }
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        reply = self._readline()
        return Ending(reply["exit_code"], reply["signal"], reply["output"])

    def _readline(self) -> Any:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the crash lab's parent process ended ({self._process.poll()})")
        return json.loads(line)

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a child that never ends
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the parent process and its children -------------------------------------------------------


def _armed_link(kill: dict[str, Any] | None, journal: str | None) -> Callable[..., None]:
    """``os.link`` that records each link and kills this process at the kill point."""
    real_link = os.link
    matches = 0

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal matches
        hit = False
        if kill is not None and fnmatch.fnmatchcase(os.fspath(dst), kill["pattern"]):
            matches += 1
            hit = matches == kill["nth"]
        if hit and kill is not None and kill["when"] == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_link(src, dst, *args, **kwargs)
        if journal is not None:
            with open(journal, "a", encoding="utf-8") as f:  # noqa: PTH123 - one line, no Path
                f.write(os.fspath(dst) + "\n")
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)

    return link


def _child(request: dict[str, Any], output: int) -> None:
    """Run one command in this (forked) process and leave with its exit code."""
    from koiitasks.cli import main  # noqa: PLC0415 - imported by the parent before forking

    os.dup2(output, 1)
    os.dup2(output, 2)
    code = 0
    try:
        os.chdir(request["cwd"])
        os.link = _armed_link(request["kill"], request["journal"])
        sys.argv = ["koiitasks", *request["args"]]
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported through the exit code and the output
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        code = 70
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _warm_up() -> None:
    """Do once, before any fork, the work every child would otherwise repeat: imports, and
    pydantic's building of each signed record class (most of a small run's first-time cost)."""
    import rich.progress  # noqa: F401, PLC0415 - `koiitasks run` imports it when it starts

    import koiitasks.cli  # noqa: PLC0415
    import koiitasks.sandbox  # noqa: F401, PLC0415
    from koiitasks import protocol  # noqa: PLC0415

    for body in (
        protocol.TaskRecord, protocol.NodeRegistration, protocol.RoundRequest,
        protocol.Submission, protocol.AcceptedSubmission, protocol.Refusal,
        protocol.AuditReport, protocol.DistributionList, protocol.DistributionAudit,
        protocol.LedgerEntry,
    ):  # fmt: skip
        protocol.Signed[body]  # type: ignore[valid-type]


def _serve() -> None:
    import tempfile  # noqa: PLC0415

    _warm_up()

    reply = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the pipe
    reply.write(json.dumps({"ready": True}) + "\n")
    reply.flush()
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryFile() as out:
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request, out.fileno())
            _, status = os.waitpid(pid, 0)
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
        killed = os.WIFSIGNALED(status)
        reply.write(
            json.dumps(
                {
                    "exit_code": None if killed else os.WEXITSTATUS(status),
                    "signal": os.WTERMSIG(status) if killed else None,
                    "output": text[-4000:],
                }
            )
            + "\n"
        )
        reply.flush()


if __name__ == "__main__":
    _serve()
