"""Shared fixtures: a real S3 HTTP endpoint on loopback, a real Prefect API, real images."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from sklearn.datasets import load_digits

from retrainer.demo import digit_png
from retrainer.records import FileEntry, Manifest, ServingSignature
from retrainer.registry import ModelRegistry
from retrainer.serving import SERVING_SIGNATURE
from retrainer.storage import LocalStore
from tests.flaky_proxy import Fault, FlakyProxy

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto_server(
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """moto in server mode, in its own process: boto3 talks real HTTP to it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **(extra_env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, endpoint
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto server did not start")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    process, endpoint = start_moto_server()
    yield endpoint
    process.terminate()
    process.wait(10)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3's normal credential chain and endpoint variable at the loopback server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_endpoint


@pytest.fixture
def bucket(s3_env: str) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


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


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in its own folder (so no .env leaks in) with no RETRAINER_ variables."""
    for name in list(os.environ):
        if name.startswith("RETRAINER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# A folder every pytest worker of this run shares (the controller makes it before they start).
SHARED_FOLDER = "TEST_SHARED_FOLDER"


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller, or a run without workers
        os.environ[SHARED_FOLDER] = tempfile.mkdtemp(prefix="retrainer-tests-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        shared = Path(os.environ.pop(SHARED_FOLDER))
        pid_file = shared / "prefect-server.pid"
        if pid_file.exists():
            with suppress(ProcessLookupError):  # a server that died on its own, already gone
                os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        shutil.rmtree(shared, ignore_errors=True)


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Held by one process at a time, across the pytest workers."""
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start_prefect_server(folder: Path) -> str:
    """Prefect's temporary API server, as `prefect_test_harness` runs it, with its database in
    `folder`, in a process group of its own: it outlives the worker that started it and is
    stopped when the run ends (`pytest_unconfigure`)."""
    port = free_port()
    with (folder / "prefect-server.log").open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "--factory"),
                "prefect.server.api.server:create_app",
                *("--host", "127.0.0.1", "--port", str(port), "--log-level", "error"),
            ],
            env={
                **os.environ,
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{folder}/prefect.db",
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (folder / "prefect-server.pid").write_text(str(process.pid))
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return url
        except OSError:
            time.sleep(0.2)
    log_tail = (folder / "prefect-server.log").read_text()[-3000:]
    raise RuntimeError(f"the Prefect server did not start:\n{log_tail}")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API (a temporary server and database); yields its URL for subprocesses.
    One server for all pytest workers: each one costs 15 to 50 s of start-up."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    shared = Path(os.environ[SHARED_FOLDER])
    url_file = shared / "prefect-api-url"
    with exclusive(shared / "prefect-server.lock"):
        if not url_file.exists():
            url_file.write_text(start_prefect_server(shared))
    url = url_file.read_text()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


@pytest.fixture
def prefect_api_url(prefect_api: str) -> str:
    return prefect_api


def digit_images(classes: int, per_class: int) -> dict[str, bytes]:
    """Real handwritten digits as `<class>/<n>.png` files."""
    digits = load_digits()
    files: dict[str, bytes] = {}
    for label in range(classes):
        pixels = digits.images[digits.target == label][:per_class]
        for index, image in enumerate(pixels):
            files[f"{label}/{index:03d}.png"] = digit_png(image)
    return files


def put_all(bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    client = boto3.client("s3")
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    store = LocalStore(folder)
    for key, data in files.items():
        store.put(key, data)
    return folder


def publish_stub_version(
    registry: ModelRegistry,
    version: str,
    files: dict[str, bytes],
    class_names: list[str],
    work_key: str | None = None,
    serving: ServingSignature | None = SERVING_SIGNATURE,
) -> None:
    """A fully published version as the registry reads it: its files, then a valid manifest.

    With a serving signature (the default, as every version publishes now) and no SavedModel
    among `files`, a stand-in `saved_model.pb` is added, so the version can be laid out for serving.
    """
    if serving is not None and not any(name.startswith(f"{serving.directory}/") for name in files):
        files = {**files, f"{serving.directory}/saved_model.pb": f"graph of {version}".encode()}
    for name, data in files.items():
        registry.store.put(registry.keys.version_file(version, name), data)
    now = datetime.now(UTC)
    manifest = Manifest(
        files={
            name: FileEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            for name, data in files.items()
        },
        data_fingerprint="f" * 64,
        class_names=class_names,
        train_images=0,
        validation_images=0,
        test_images=len(version) * 10,
        parameters={},
        device="test",
        started_from="a fresh model",
        resumed_from_epoch=0,
        epochs_run=1,
        git_commit="test",
        work_key=work_key or f"work-of-{version}",
        packages={},
        run_id=f"run-{version}",
        started_at=now,
        finished_at=now,
        serving=serving,
    )
    registry.store.put(
        registry.keys.version_file(version, "manifest.json"), manifest.model_dump_json().encode()
    )
