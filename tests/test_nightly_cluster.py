"""The nightly flow on a real two-node Ray cluster, started with `ray start` the way a team starts
one: a head node and a second node on this machine (each with its own CPU, resource and temp dir,
token authentication), and the flow pointed at the head's address (127.0.0.1:PORT). Shards run on
both nodes and give exactly the rows of one `score` run."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from helpers import Canonical, WriteJob
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from itdr_batch.cli import app

RAY = Path(sys.executable).parent / "ray"
SHARDS = 4
NIGHT = "2026-11-29"
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Cluster:
    """A running cluster: the head's GCS address, the Ray node id of each custom resource, and
    the environment of a process that joins it (token authentication, as Ray recommends)."""

    address: str
    nodes: dict[str, str]
    auth: dict[str, str]


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Head (resource ``node_a``) and a second node (``node_b``), one CPU each.

    Each runs as ``ray start --block``: the command holds its node's processes, which share its
    fate, and SIGTERM makes it stop them. So teardown stops exactly these two nodes; ``ray stop``
    would stop every Ray process of the user on the machine, other sessions' included.
    """
    root = tmp_path_factory.mktemp("cluster")
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = [f"--port={port}", f"--ray-client-server-port={_free_port()}"]
    head += ["--head", "--include-dashboard=false"]
    # Ray's sockets live in the temp dir, and their paths may not exceed 107 bytes: a short one.
    temp = Path(tempfile.mkdtemp(prefix="itdr-ray-"))
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        for name, role in (("node_a", head), ("node_b", [f"--address={address}"])):
            nodes.append(_start_node(root / f"{name}.log", temp / name, name, role, auth))
        yield Cluster(address, _node_ids(address, auth), auth)
    finally:
        for node in reversed(nodes):
            node.terminate()
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _start_node(
    log: Path, temp: Path, name: str, role: list[str], auth: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``ray start`` for one node; returns once the node is up (its command says so)."""
    command = [str(RAY), "start", "--block", *role]
    command += ["--num-cpus=1", "--num-gpus=0", f'--resources={{"{name}": 1}}']
    command += ["--object-store-memory=200000000", "--disable-usage-stats"]
    command += [f"--temp-dir={temp}", f"--dashboard-agent-listen-port={_free_port()}"]
    with log.open("wb") as output:
        env = {**os.environ, **auth}
        node = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Ray runtime started" not in log.read_text():
        if node.poll() is not None or time.monotonic() > deadline:
            node.kill()
            pytest.fail(f"ray start for {name} did not start:\n{log.read_text()}")
        time.sleep(0.5)
    return node


def _node_ids(address: str, auth: dict[str, str]) -> dict[str, str]:
    """The Ray node id of each node, asked of the cluster by a driver of its own."""
    script = (
        "import json, sys, ray\n"
        "ray.init(sys.argv[1], logging_level='ERROR')\n"
        "nodes = [n for n in ray.nodes() if n['Alive']]\n"
        "print(json.dumps({r: n['NodeID'] for n in nodes for r in n['Resources']"
        " if r.startswith('node_')}))\n"
    )
    command = [sys.executable, "-c", script, address]
    done = subprocess.run(command, env={**os.environ, **auth}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ids: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
    assert sorted(ids) == ["node_a", "node_b"], done.stdout + done.stderr
    return ids


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def driver(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """This process joins the cluster as a driver: the cluster's token in its environment. Ray
    caches the token it reads, so the cache is dropped on the way in and out (other tests' local
    clusters have tokens of their own)."""
    from ray._private.authentication_test_utils import reset_auth_token_state

    for name, value in cluster.auth.items():
        monkeypatch.setenv(name, value)
    reset_auth_token_state()
    yield cluster
    monkeypatch.undo()
    reset_auth_token_state()


@pytest.fixture(scope="module")
def cluster_job(write_job: WriteJob, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TKR likelihood in evaluation mode, one user per batch: every prompt meets the engine alone
    in the shard runs and in the single run alike (identical floats)."""
    folder = tmp_path_factory.mktemp("nightly-cluster")
    return write_job(folder, prompts={"tasks": ["tkr"]}, scoring={"batch_size": 1})


@pytest.mark.slow
def test_nightly_runs_shards_on_both_nodes_of_a_cluster(
    harness: None, driver: Cluster, cluster_job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    """Two shards at a time on two one-CPU nodes, one CPU per shard: every pair runs one shard on
    each node."""
    from itdr_batch.nightly import nightly

    single = tmp_path / "single"
    args = ["score", "--users", str(movielens.users), "--config", str(cluster_job)]
    scored = CliRunner().invoke(app, [*args, "--out", str(single)])
    assert scored.exit_code == 0, scored.output

    out = tmp_path / "nightly"
    summary = nightly(
        str(cluster_job),
        str(movielens.users),
        str(out),
        NIGHT,
        SHARDS,
        gpu_slots=2,
        ray_address=driver.address,
        cpus_per_shard=1,
    )
    assert {s["node"] for s in summary["shards"]} == set(driver.nodes.values())
    assert {s["host"] for s in summary["shards"]} == {socket.gethostname()}
    assert summary["rows"] == pl.read_parquet(movielens.users).height

    night = out / NIGHT
    merged = pl.concat(pl.read_parquet(p) for p in sorted(night.glob("shard-*/tkr.parquet")))
    expected = pl.read_parquet(single / "tkr.parquet")
    order = ["user_id", "position"]
    assert_frame_equal(merged.drop("run_id").sort(order), expected.drop("run_id").sort(order))
