"""`koiitasks storage init`: make an S3 bucket ready for records, and prove it is create-only."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from koiitasks.cli._common import JsonOption, out
from koiitasks.settings import load_settings

app = typer.Typer(help="Prepare and check record stores.", no_args_is_help=True)


@app.command("init")
def init(
    url: Annotated[str, typer.Argument(help="s3://BUCKET[/PREFIX] (or moto://BUCKET to try it).")],
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            "--endpoint-url",
            help="S3 endpoint for MinIO or a moto server; default $KOII_S3_ENDPOINT_URL, "
            "else AWS. Credentials and region come from boto3's usual chain.",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create the bucket if missing, enable versioning, and check conditional writes.

    A store that ignores `If-None-Match` is refused: paying each round exactly once depends on
    a second create of the same key failing. Safe to run again.

        koiitasks storage init s3://koii-dev
        KOII_S3_ENDPOINT_URL=http://127.0.0.1:5000 koiitasks storage init s3://koii-dev/task-a
    """
    from koiitasks.storage.s3_init import init_s3_store  # noqa: PLC0415 - boto3 is heavy

    endpoint = endpoint_url or load_settings().s3_endpoint_url
    report = init_s3_store(url, endpoint)
    if json_out:
        print(json.dumps(dataclasses.asdict(report)))
        return
    created = "created" if report.bucket_created else "found"
    out.print(
        f"ok: bucket {report.bucket} {created} at {report.endpoint} ({report.region}); "
        f"versioning {report.versioning}; conditional writes refused a second create. "
        f"Use it with --store {report.url}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
