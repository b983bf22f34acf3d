"""Screenshots of the Prefect UI watching a deployed task, for the docs (not a test).

::

    .venv/bin/python infra/ui_screenshots.py [--out docs/img] [--chromium /usr/bin/chromium]

It starts ``prefect server start`` with its UI on a free loopback port (SQLite, a temporary
PREFECT_HOME), deploys ``examples/hash-puzzle`` with 8-second rounds on 6 simulated nodes (one of
them lazy, so a round slashes it), waits until a round is paid and its flow run has completed,
then has headless Chromium take three pictures: the deployment's runs, the paid round's flow run
and that run's payouts artifact. Everything it started is stopped at the end.

Chromium is Debian's ``chromium`` package (``apt-get install chromium``); the script says so when
it is missing. It is started with no sandbox (this runs as root in CI machines) and with every
background connection off, since the machine has no network but loopback.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from koiitasks.testing import write_task
from koiitasks.testing.deployed import (
    DEPLOYED_CONFIG,
    DeployProcess,
    deployment_runs,
    run_artifacts,
)
from koiitasks.testing.processes import PrefectServer, free_port

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"task_name": "Hash Puzzle", **DEPLOYED_CONFIG}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1440,900",
    # The UI is a single-page app: let it fetch and draw before the picture is taken.
    "--virtual-time-budget=20000",
]


def shoot(chromium: str, url: str, out: Path, profile: Path) -> None:
    """One picture of ``url`` into ``out``."""
    subprocess.run(  # noqa: S603 - a browser we were told about, fixed flags
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", url],
        capture_output=True,
        timeout=180,
        check=True,
    )
    print(f"{out}  <- {url}")


def paid_completed_round(deployed: DeployProcess, api_url: str) -> tuple[int, str] | None:
    """A round paid in the ledger whose flow run has completed, and that run's id."""
    ledger = deployed.ledger()
    paid = {e.body.round for e in ledger.entries if e.body.credits and e.body.slashes}
    for run in deployment_runs(api_url, deployed.task_id):
        name = run.name.removeprefix(f"{deployed.task_id}-round-")  # once it has started
        if name.isdigit() and int(name) in paid and run.state and run.state.is_completed():
            return int(name), str(run.id)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="folder")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        print(
            f"error: no Chromium at {args.chromium}\n"
            "hint: apt-get install chromium (Debian), or give --chromium PATH",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="koiitasks-ui-"))
    source = (ROOT / "examples" / "hash-puzzle" / "task.py").read_text()
    task_dir = write_task(work / "task", source, config=CONFIG)
    port = free_port()
    ui_env = {"PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}  # else it asks port 4200
    with PrefectServer(work / "prefect", port=port, ui=True, extra_env=ui_env) as server:
        options = ("--nodes", "6", "--seed", "3", "--adversary", "lazy=1", "--start-in", "5")
        with DeployProcess(
            task_dir, work / "store", server.api_url, work / "client", options=options
        ) as deployed:
            found: list[tuple[int, str]] = []

            def a_round_to_show() -> bool:
                found[:] = [f for f in [paid_completed_round(deployed, server.api_url)] if f]
                return bool(found)

            deployed.wait_for(a_round_to_show, timeout_s=240, what="a paid round that slashed")
            ((number, run_id),) = found
            ui = server.api_url.removesuffix("/api")
            artifact = next(
                a
                for a in run_artifacts(server.api_url, run_id)
                if a.key and a.key.endswith("-payouts")
            )
            profile = work / "chromium"
            shoot(args.chromium, f"{ui}/deployments", args.out / "ui-deployments.png", profile)
            shoot(args.chromium, f"{ui}/runs/flow-run/{run_id}", args.out / "ui-round.png", profile)
            shoot(
                args.chromium,
                f"{ui}/artifacts/artifact/{artifact.id}",
                args.out / "ui-payouts.png",
                profile,
            )
            print(f"round {number} of {deployed.task_id}: run {run_id}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
