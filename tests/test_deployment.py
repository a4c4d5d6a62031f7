"""prefect.yaml through real Prefect parts: a server, a process work pool, a worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import digit_images, free_port, write_files

REPOSITORY = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`prefect server start` on loopback with its own home; yields the env that points at it."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("prefect server did not start") from None
            time.sleep(0.5)
    yield env
    server.terminate()
    server.wait(30)


def prefect(env: dict[str, str], *arguments: str, timeout: float = 300) -> str:
    answer = subprocess.run(
        [PREFECT, *arguments],
        env=env,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert answer.returncode == 0, answer.stdout + answer.stderr
    return answer.stdout


def flow_run_state(env: dict[str, str], flow_run_id: str) -> str:
    with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}") as answer:
        return str(json.load(answer)["state_type"])


@pytest.mark.slow
def test_nightly_deployment_runs_on_a_process_worker_and_publishes(
    prefect_server: dict[str, str], tmp_path: Path
) -> None:
    data = write_files(tmp_path / "images", digit_images(classes=3, per_class=60))
    env = {
        **prefect_server,
        "RETRAINER_WORK_POOL": "e2e-process",
        "RETRAINER_CODE_DIR": str(REPOSITORY),
        "RETRAINER_STORE_URL": str(tmp_path / "store"),
        "RETRAINER_DATA_URL": str(data),
        "RETRAINER_CACHE_DIR": str(tmp_path / "cache"),
        "RETRAINER_IMAGE_SIZE": "16",
        "RETRAINER_BATCH_SIZE": "16",
        "RETRAINER_LEARNING_RATE": "0.003",
    }
    prefect(env, "work-pool", "create", "e2e-process", "--type", "process")
    prefect(env, "deploy", "--all")
    parameters = json.dumps({"parameters": {"epochs": 12, "model_name": "deployed"}})
    started = prefect(
        env,
        "deployment",
        "run",
        "retrain/nightly",
        "--params",
        parameters,
    )
    match = re.search(r"UUID: ([0-9a-f-]{36})", started)
    assert match, started
    flow_run_id = match.group(1)

    refused = subprocess.run(
        [
            PREFECT,
            "deployment",
            "run",
            "retrain/nightly",
            "--params",
            '{"parameters": {"epochs": 0}}',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0, "the API accepted epochs 0"
    assert "0 is less than the minimum of 1" in refused.stdout + refused.stderr

    prefect(env, "worker", "start", "--pool", "e2e-process", "--run-once", timeout=600)

    assert flow_run_state(env, flow_run_id) == "COMPLETED"
    champion = json.loads((tmp_path / "store/models/deployed/champion.json").read_text())
    assert (
        tmp_path / f"store/models/deployed/versions/{champion['version']}/model.keras"
    ).is_file()

    # A worker without the code: the pull step clones the repository. Same data, parameters and
    # code, so this second night skips training.
    cloning = {key: value for key, value in env.items() if key != "RETRAINER_CODE_DIR"}
    cloning["RETRAINER_GIT_URL"] = str(REPOSITORY)
    again = prefect(cloning, "deployment", "run", "retrain/nightly", "--params", parameters)
    second_run = re.search(r"UUID: ([0-9a-f-]{36})", again)
    assert second_run, again
    prefect(cloning, "worker", "start", "--pool", "e2e-process", "--run-once", timeout=600)
    assert flow_run_state(cloning, second_run.group(1)) == "COMPLETED"


def test_deployment_files_parse_and_the_kubernetes_template_requests_a_gpu() -> None:
    config = yaml.safe_load((REPOSITORY / "prefect.yaml").read_text())
    (nightly,) = config["deployments"]
    assert nightly["schedules"][0] == {"cron": "0 2 * * *", "timezone": "UTC", "active": True}
    assert nightly["concurrency_limit"]["limit"] == 1
    for path in (REPOSITORY / "deploy").iterdir():
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            yaml.safe_load(path.read_text())
    kubernetes = json.loads((REPOSITORY / "deploy/kubernetes-gpu-job-template.json").read_text())
    pod = kubernetes["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert kubernetes["variables"]["properties"]["gpu_count"]["default"] >= 1
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    docker = json.loads((REPOSITORY / "deploy/docker-gpu-job-template.json").read_text())
    requests = docker["variables"]["properties"]["container_create_kwargs"]["default"]
    assert requests["device_requests"][0]["capabilities"] == [["gpu"]]
