"""Every read and write survives what real object stores do: 503 SlowDown, dropped connections,
and a conditional write that landed but whose answer was lost. Real HTTP all the way: boto3 talks
to a misbehaving proxy in front of the S3 test server; nothing in boto3 is patched."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from retrainer.fetching import fetch_data
from retrainer.registry import ModelRegistry
from retrainer.storage import S3Store
from tests.flaky_proxy import Fault, FlakyProxy, every, once_for


@pytest.fixture
def flaky(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Fault], FlakyProxy]]:
    proxies: list[FlakyProxy] = []

    def through(fault: Fault) -> FlakyProxy:
        proxy = FlakyProxy(s3_env, fault)
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        return proxy

    yield through
    for proxy in proxies:
        proxy.close()


@pytest.mark.parametrize("action", ["slowdown", "drop"])
def test_store_operations_survive_faults(
    bucket: str, flaky: Callable[[Fault], FlakyProxy], tmp_path: Path, action: str
) -> None:
    proxy = flaky(every(3, action))
    store = S3Store(bucket, "flaky")
    for index in range(12):
        store.put(f"data/c{index % 2}/{index}.txt", f"object {index}".encode())
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights" * 1000)
    store.upload("models/model.bin", source)

    assert len(list(store.list("data/"))) == 12
    assert store.get("data/c0/4.txt") == b"object 4"
    store.download("models/model.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    snapshot = fetch_data(S3Store(bucket, "flaky/data"), tmp_path / "cache")
    assert snapshot.file_count == snapshot.downloaded == 12
    assert len(proxy.faults_served) >= 10, "the proxy did not misbehave"


@pytest.mark.parametrize("first_champion", [True, False])
def test_a_promotion_whose_answer_was_lost_is_recognised_as_done(
    bucket: str, flaky: Callable[[Fault], FlakyProxy], first_champion: bool
) -> None:
    registry = ModelRegistry(S3Store(bucket, "registry"), "m")
    for version in ("v1", "v2"):
        registry.store.put(registry.file_key(version, "manifest.json"), b"{}")
    if not first_champion:
        registry.promote("v1", "run-1", "passed", None)
    _, etag = registry.read_champion()

    proxy = flaky(once_for("PUT", "champion.json", "lose-answer"))
    version = "v1" if first_champion else "v2"
    champion = ModelRegistry(S3Store(bucket, "registry"), "m").promote(
        version, "run-2", "passed", etag
    )

    assert proxy.faults_served == [
        "lose-answer PUT /" + f"{bucket}/registry/models/m/champion.json"
    ]
    assert champion.version == version
    stored = boto3.client("s3").get_object(Bucket=bucket, Key="registry/models/m/champion.json")
    assert version in stored["Body"].read().decode()
