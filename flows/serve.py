"""Serve the nightly deployment from a single box: ``uv run --locked --extra cpu python
flows/serve.py`` from the project root, no work pool or worker needed.

The schedule, parameters and one-run-at-a-time limit are read from ``prefect.yaml``, so both ways
of deploying run the same thing.
"""

from pathlib import Path
from typing import cast

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from itdr_batch.nightly import nightly

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def deployment(name: str = "nightly", spec: Path = PREFECT_YAML) -> RunnerDeployment:
    """The deployment ``name`` of ``spec`` as a deployment this process serves."""
    entries = yaml.safe_load(spec.read_text())["deployments"]
    entry = next((e for e in entries if e["name"] == name), None)
    if entry is None:
        raise SystemExit(f"{spec}: no deployment named {name!r}")
    # Called outside an event loop, to_deployment returns the deployment, not a coroutine.
    return cast(
        RunnerDeployment,
        nightly.to_deployment(
            name=name,
            description=entry["description"],
            parameters=entry["parameters"],
            schedules=[Cron(s["cron"], timezone=s["timezone"]) for s in entry["schedules"]],
            concurrency_limit=ConcurrencyLimitConfig(**entry["concurrency_limit"]),
        ),
    )


if __name__ == "__main__":
    serve(deployment())
