"""How close to its first slot each scheduled round's flow run starts.

::

    python bench/schedule_bench.py [--rounds 20] [--nodes 10] [--task examples/hash-puzzle]
                                   [--round-time SLOTS] [--prefetch 15] [--json]

Starts a ``prefect server start`` (SQLite) on 127.0.0.1 in a temporary PREFECT_HOME, deploys the
task with ``koiitasks deploy --nodes N`` (served in the foreground, as a user runs it), waits
until ``--rounds`` scheduled rounds have a flow run that started, and stops everything.

Per round it reports, in slots of the task's ``slot_ms``:

- start delay: the flow run's start (Prefect's ``start_time``, when it entered Running) minus
  its round's first slot. Negative means early: the server lets a waiting run in when less than
  half a second is left, and the run then waits for its slot itself.
- execute delay: the slot the first answer of the round was received in, minus the round's
  first slot (the flow asks the nodes at the round's first slot, or as soon as it runs).

Goals: median start delay at most 1 slot, maximum at most 3. The machine's load average is
printed with the figures: on a shared 2-core machine, process start-up dominates. The benchmark
reports numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from koiitasks.deployment import plan_deployment
from koiitasks.protocol import AcceptedSubmission, decode
from koiitasks.storage import Layout, open_store
from koiitasks.task import load_task
from koiitasks.testing.deployed import DeployProcess, deployment_runs
from koiitasks.testing.processes import PrefectServer

ROOT = Path(__file__).resolve().parents[1]


def first_answer_slot(store: str, task_id: str, round_number: int) -> int | None:
    the_store = open_store(store)
    slots = [
        decode(the_store.read(key), AcceptedSubmission, where=key).body.received_slot
        for key in the_store.list(Layout(task_id).submissions(round_number))
    ]
    return min(slots) if slots else None


def task_copy(args: argparse.Namespace, work: Path) -> Path:
    """The task folder to deploy: ``--task`` itself, or a copy with ``--round-time``."""
    if args.round_time is None:
        return Path(args.task)
    copy = work / "task"
    shutil.copytree(args.task, copy)
    config = yaml.safe_load((copy / "config-task.yml").read_text())
    config["round_time"] = args.round_time
    (copy / "config-task.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    args.task = str(task_copy(args, work))
    task = load_task(args.task)
    slot_ms = task.config.slot_ms
    store = work / "store"
    load_before = os.getloadavg()
    with PrefectServer(work / "server") as server:
        deployed = DeployProcess(
            Path(args.task),
            store,
            server.api_url,
            work / "client",
            options=(
                "--nodes",
                str(args.nodes),
                "--seed",
                "1",
                "--start-in",
                "20",
                "--prefetch",
                str(args.prefetch),
            ),
        )
        with deployed:

            def started() -> list[Any]:
                runs = deployment_runs(server.api_url, task.task_id)
                prefix = f"{task.task_id}-round-"
                return [r for r in runs if r.start_time and r.name.startswith(prefix)]

            deployed.wait_for(
                lambda: len(started()) >= args.rounds,
                timeout_s=args.rounds * 60,
                what=f"{args.rounds} scheduled rounds to start",
            )
            last = started()[args.rounds - 1]

            def last_answered() -> bool:
                """The last round has an answer stored, or its run ended (missed) without."""
                if first_answer_slot(str(store), task.task_id, _round(last)) is not None:
                    return True
                state = next(r for r in started() if r.id == last.id).state
                return state is not None and state.is_final()

            deployed.wait_for(last_answered, timeout_s=120, what="the last round's answers")
            runs = started()[: args.rounds]
        load_after = os.getloadavg()
        plan = plan_deployment(args.task, str(store))
    rows = []
    for run in runs:
        number = _round(run)
        due_ms = run.expected_start_time.timestamp() * 1000
        start_delay = (run.start_time.timestamp() * 1000 - due_ms) / slot_ms
        answered = first_answer_slot(str(store), task.task_id, number)
        round_slot = plan.schedule.round_start(number)
        rows.append(
            {
                "round": number,
                "start_delay_slots": round(start_delay, 2),
                "execute_delay_slots": None if answered is None else answered - round_slot,
                "state": run.state.name if run.state else None,
            }
        )
    delays = [r["start_delay_slots"] for r in rows]
    late = [max(0.0, d) for d in delays]
    return {
        "task": task.task_id,
        "slot_ms": slot_ms,
        "round_ms": task.config.round_time * slot_ms,
        "rounds": len(rows),
        "nodes": args.nodes,
        "prefetch_s": args.prefetch,
        "start_delay_median_slots": round(statistics.median(delays), 2),
        "start_delay_max_slots": round(max(delays), 2),
        "lateness_median_slots": round(statistics.median(late), 2),
        "lateness_max_slots": round(max(late), 2),
        "missed": sum(1 for r in rows if r["state"] == "Missed"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "per_round": rows,
    }


def _round(run: Any) -> int:
    return int(run.name.rsplit("-", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--task", default=str(ROOT / "examples" / "hash-puzzle"))
    parser.add_argument("--prefetch", type=float, default=15.0)
    parser.add_argument("--round-time", type=int, help="deploy a copy with this round_time")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="koiitasks-schedule-bench-") as tmp:
        result = measure(args, Path(tmp))
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['rounds']} rounds of {result['task']} ({result['round_ms']} ms rounds, "
        f"{result['slot_ms']} ms slots, {result['nodes']} nodes, prefetch {result['prefetch_s']} s)"
    )
    print("round  start delay (slots)  execute delay (slots)  state")
    for row in result["per_round"]:
        print(
            f"{row['round']:>5}  {row['start_delay_slots']:>19}  "
            f"{row['execute_delay_slots']!s:>21}  {row['state']}"
        )
    print(
        f"start delay: median {result['start_delay_median_slots']} slots, max "
        f"{result['start_delay_max_slots']} slots (goal: median <= 1, max <= 3); "
        f"missed {result['missed']}; load average {result['load_average_before']} -> "
        f"{result['load_average_after']} on {result['cpus']} CPUs",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
