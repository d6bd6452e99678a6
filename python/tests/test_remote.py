"""Stores on object storage from Python: ``SquirrelStore(url, read_only=True)`` and
``MessagepackDriver(url)`` against a real S3 server on loopback (moto's, started by
``.ci/s3-server.sh``; ``.ci/run`` exports its ``SQUIRREL_S3_*`` variables)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator

import numpy as np
import pytest

from squirrel_store import MessagepackDriver, SquirrelStore
from squirrel_store._errors import ReadOnlyError, StoreNotFoundError

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, str]]:
    if "SQUIRREL_S3_ENDPOINT" in os.environ:
        yield {k: v for k, v in os.environ.items() if k.startswith("SQUIRREL_S3_")}
        return
    state = tmp_path_factory.mktemp("s3")
    out = subprocess.run(
        ["bash", str(REPO / ".ci" / "s3-server.sh"), "start", str(state), str(os.getpid())],
        check=True, capture_output=True, text=True,
    ).stdout
    env = dict(line[len("export "):].split("=", 1) for line in out.splitlines() if line.startswith("export "))
    yield env
    subprocess.run(["bash", str(REPO / ".ci" / "s3-server.sh"), "stop", str(state)], check=False)


def options(s3: Dict[str, str]) -> Dict[str, str]:
    return {
        "aws_endpoint": s3["SQUIRREL_S3_ENDPOINT"],
        "aws_allow_http": "true",
        "aws_access_key_id": s3["SQUIRREL_S3_ACCESS_KEY_ID"],
        "aws_secret_access_key": s3["SQUIRREL_S3_SECRET_ACCESS_KEY"],
        "aws_region": s3["SQUIRREL_S3_REGION"],
    }


def push(cli: str, s3: Dict[str, str], store: Path, url: str) -> None:
    env = dict(os.environ)
    env.update(
        AWS_ENDPOINT_URL=s3["SQUIRREL_S3_ENDPOINT"],
        AWS_ALLOW_HTTP="true",
        AWS_ACCESS_KEY_ID=s3["SQUIRREL_S3_ACCESS_KEY_ID"],
        AWS_SECRET_ACCESS_KEY=s3["SQUIRREL_S3_SECRET_ACCESS_KEY"],
        AWS_REGION=s3["SQUIRREL_S3_REGION"],
    )
    subprocess.run([cli, "push", str(store), url], check=True, env=env, capture_output=True)


def unique(s3: Dict[str, str], name: str) -> str:
    return f"s3://{s3['SQUIRREL_S3_BUCKET']}/py-{name}-{os.getpid()}-{time.time_ns()}"


def test_a_pushed_store_reads_back_from_s3(tmp_path: Path, cli: str, s3: Dict[str, str]) -> None:
    local = SquirrelStore(tmp_path / "store")
    shards = {
        f"shard_{i}": [{"image": np.arange(12, dtype=np.float32).reshape(3, 4) * i, "label": i} for _ in range(3)]
        for i in range(6)
    }
    for k, v in shards.items():
        local.set(v, key=k)
    local.close()
    url = unique(s3, "store")
    push(cli, s3, tmp_path / "store", url)

    remote = SquirrelStore(url, read_only=True, **options(s3))
    assert sorted(remote.keys()) == sorted(shards)
    assert len(remote) == 6
    assert "shard_1" in remote and "nope" not in remote
    for k, v in shards.items():
        got = list(remote.get(k))
        assert [s["label"] for s in got] == [s["label"] for s in v]
        np.testing.assert_array_equal(got[0]["image"], v[0]["image"])
        assert got[0]["image"].dtype == np.float32
    assert remote.stats()["keys"] == 6
    with pytest.raises(ReadOnlyError):
        remote.set([{"x": 1}], key="new")

    driver = MessagepackDriver(url, storage_options=options(s3))
    labels = sorted(s["label"] for s in driver.get_iter(max_workers=2, seed=1))
    assert labels == sorted(i for i in range(6) for _ in range(3))


def test_remote_stores_are_read_only_and_missing_ones_say_so(s3: Dict[str, str]) -> None:
    url = unique(s3, "missing")
    with pytest.raises(ValueError, match="read_only=True"):
        SquirrelStore(url)
    with pytest.raises(StoreNotFoundError, match=url):
        SquirrelStore(url, read_only=True, **options(s3))
