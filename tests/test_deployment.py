"""prefect.yaml through real Prefect parts: a server, a process work pool, a worker."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prefect.client.schemas.objects import FlowRun

import retrainer
from retrainer.tensorflow_runtime import START_UP_LINE
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


def prefect(
    env: dict[str, str], *arguments: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """A `prefect` command that must succeed."""
    answer = subprocess.run(
        [PREFECT, *arguments],
        env=env,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert answer.returncode == 0, answer.stdout + answer.stderr
    return answer


def flow_run(env: dict[str, str], flow_run_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}") as answer:
        return dict(json.load(answer))


def run_log(env: dict[str, str], flow_run_id: str) -> str:
    """Every line of a flow run's log in the Prefect API, as the UI shows them."""
    query = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    request = urllib.request.Request(
        f"{env['PREFECT_API_URL']}/logs/filter",
        data=json.dumps(query).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        return "\n".join(line["message"] for line in json.load(answer))


@pytest.mark.slow
def test_nightly_deployment_runs_on_a_process_worker_and_publishes(
    prefect_server: dict[str, str], tmp_path: Path
) -> None:
    data = write_files(tmp_path / "images", digit_images(classes=3, per_class=60))
    # Not inherited from this process: the deployment itself routes the stages' log lines.
    prefect_server.pop("PREFECT_LOGGING_EXTRA_LOGGERS", None)
    env = {
        **prefect_server,
        "RETRAINER_WORK_POOL": "e2e-process",
        "RETRAINER_STORE_URL": str(tmp_path / "store"),
        "RETRAINER_DATA_URL": str(data),
        "RETRAINER_CACHE_DIR": str(tmp_path / "cache"),
        "RETRAINER_IMAGE_SIZE": "16",
        "RETRAINER_BATCH_SIZE": "16",
        "RETRAINER_LEARNING_RATE": "0.003",
    }
    prefect(env, "work-pool", "create", "e2e-process", "--type", "process")
    prefect(env, "deploy", "--all")
    form = json.loads(
        prefect(env, "deployment", "inspect", "retrain/nightly", "--output", "json").stdout
    )
    epochs = form["parameter_openapi_schema"]["properties"]["epochs"]
    assert (epochs["type"], epochs["minimum"], epochs["maximum"]) == ("integer", 1, 1000)
    assert "Empty: the worker's RETRAINER_EPOCHS" in epochs["description"]
    started = prefect(
        env,
        "deployment",
        "run",
        "retrain/nightly",
        "--param",
        "epochs=12",
        "--param",
        "model_name=deployed",
    ).stdout
    match = re.search(r"UUID: ([0-9a-f-]{36})", started)
    assert match, started
    flow_run_id = match.group(1)

    refused = subprocess.run(
        [
            PREFECT,
            "deployment",
            "run",
            "retrain/nightly",
            "--param",
            "epochs=0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0, "the API accepted epochs 0"
    said = " ".join((refused.stdout + refused.stderr).split())
    assert (
        "Validation failed for field 'epochs'. Failure reason: 0 is less than the minimum of 1"
        in said
    )

    worker = prefect(env, "worker", "start", "--pool", "e2e-process", "--run-once", timeout=600)
    worker_output = worker.stdout + worker.stderr

    night = flow_run(env, flow_run_id)
    assert (night["state_type"], night["state_name"]) == ("COMPLETED", "Promoted")
    assert re.fullmatch(r"deployed-\d{4}-\d{2}-\d{2}", night["name"]), night["name"]
    log = run_log(env, flow_run_id)
    assert "Validated 180 images in 3 classes" in log  # a module logger
    # The run prepared images on threads and trained: TensorFlow started quietly once, and what
    # it said about the GPU it could not use is in the device line.
    assert not [line for line in worker_output.splitlines() if START_UP_LINE.match(line)]
    assert "TensorFlow said: " in log
    champion = json.loads((tmp_path / "store/models/deployed/champion.json").read_text())
    assert (
        tmp_path / f"store/models/deployed/versions/{champion['version']}/model.keras"
    ).is_file()

    # A worker whose image carries another commit clones the repository: the version it publishes
    # records the commit it cloned, not the image's.
    cloned_commit = subprocess.run(
        ["git", "-C", str(REPOSITORY), "rev-parse", "main"], capture_output=True, text=True
    ).stdout.strip()
    cloning = {
        **env,
        "RETRAINER_GIT_URL": str(REPOSITORY),
        "RETRAINER_GIT_COMMIT": "the-image-s-commit",
    }
    forced = json.dumps({"epochs": 2, "model_name": "deployed", "force": True})
    again = prefect(cloning, "deployment", "run", "retrain/nightly", "--params", forced).stdout
    second_run = re.search(r"UUID: ([0-9a-f-]{36})", again)
    assert second_run, again
    prefect(cloning, "worker", "start", "--pool", "e2e-process", "--run-once", timeout=600)
    assert flow_run(cloning, second_run.group(1))["state_type"] == "COMPLETED"
    versions = sorted((tmp_path / "store/models/deployed/versions").iterdir())
    manifest = json.loads((versions[-1] / "manifest.json").read_text())
    assert manifest["git_commit"] == cloned_commit


def test_deployment_files_parse_and_the_schedule_is_nightly() -> None:
    config = yaml.safe_load((REPOSITORY / "prefect.yaml").read_text())
    (nightly,) = config["deployments"]
    assert nightly["schedules"][0] == {"cron": "0 2 * * *", "timezone": "UTC", "active": True}
    assert nightly["concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_limit"]["grace_period_seconds"] >= 900  # a GPU node's start-up
    # The stages' module loggers reach the run log wherever the flow runs.
    extra_loggers = nightly["work_pool"]["job_variables"]["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"]
    assert extra_loggers == retrainer.__name__
    dockerfile = (REPOSITORY / "deploy" / "Dockerfile").read_text()
    assert f"PREFECT_LOGGING_EXTRA_LOGGERS={retrainer.__name__} " in dockerfile
    for path in (REPOSITORY / "deploy").iterdir():
        if path.suffix == ".json":
            json.loads(path.read_text())


def test_the_image_installs_and_preloads_tcmalloc_where_the_doctor_looks_for_it() -> None:
    from retrainer.doctor import TCMALLOC

    dockerfile = (REPOSITORY / "deploy" / "Dockerfile").read_text()
    assert re.search(r"apt-get install [^\n]* libtcmalloc-minimal4", dockerfile)
    assert f"ENV LD_PRELOAD={TCMALLOC} " in dockerfile
    assert "'libtcmalloc' in open('/proc/self/maps').read()" in dockerfile  # the build's smoke test


def rendered(configuration: type[Any], template_file: str) -> Any:
    """The job a worker would start, rendered by the worker's own job configuration class."""
    template = json.loads((REPOSITORY / "deploy" / template_file).read_text())
    values = {"image": "registry.example.com/retrainer:abc123"}
    job = asyncio.run(configuration.from_template_and_values(template, values))
    job.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="nightly"))
    return job


# prefect-kubernetes 0.8.0 refuses a manifest without these in the pod spec, where Kubernetes does
# not define them; the API server drops them (with a warning). Everything else must be valid.
REQUIRED_BY_THE_WORKER_ONLY = ("parallelism", "completions")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("kubernetes_version", ["1.35.0", "1.37.0"])
def test_the_kubernetes_job_is_valid_kubernetes_and_asks_for_a_gpu_safely(
    kubernetes_version: str,
) -> None:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    manifest = copy.deepcopy(
        rendered(KubernetesWorkerJobConfiguration, "kubernetes-gpu-job-template.json").job_manifest
    )
    pod = manifest["spec"]["template"]["spec"]
    for field in REQUIRED_BY_THE_WORKER_ONLY:
        assert pod.pop(field) == 1
    kubernetes_validate.validate(manifest, kubernetes_version, strict=True)

    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["ephemeral-storage"] == "20Gi"
    assert {"name": "cache", "mountPath": "/cache"} in container["volumeMounts"]
    assert pod["volumes"] == [{"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}}]
    assert pod["nodeSelector"] == {}  # no label that only the GPU operator sets
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsUser"] == 10001
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 86400
    assert manifest["spec"]["backoffLimit"] == 0
    assert {"name": "RETRAINER_DEVICE", "value": "gpu"} in container["env"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_the_docker_job_asks_for_every_gpu_and_keeps_its_cache_in_a_volume() -> None:
    from prefect_docker.worker import DockerWorkerJobConfiguration

    template = json.loads((REPOSITORY / "deploy/docker-gpu-job-template.json").read_text())
    # Every field of the template is one the worker knows: none is silently dropped.
    assert set(template["job_configuration"]) <= set(DockerWorkerJobConfiguration.model_fields)
    job = rendered(DockerWorkerJobConfiguration, "docker-gpu-job-template.json")
    assert job.container_create_kwargs["device_requests"][0]["capabilities"] == [["gpu"]]
    assert job.volumes == ["retrainer-cache:/cache"]
    assert job.env["RETRAINER_DEVICE"] == "gpu"


def commit_file(repository: Path, text: str) -> str:
    (repository / "version.txt").write_text(text)
    for command in (["add", "version.txt"], ["commit", "--quiet", "-m", text]):
        subprocess.run(["git", "-C", str(repository), *command], check=True)
    return subprocess.run(
        ["git", "-C", str(repository), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def test_the_pull_step_clones_a_pinned_commit_and_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pull import locate_code

    repository = tmp_path / "code"
    subprocess.run(["git", "init", "--quiet", "-b", "main", str(repository)], check=True)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "t")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@example.com")
    pinned = commit_file(repository, "first")
    commit_file(repository, "second")
    monkeypatch.setenv("RETRAINER_GIT_URL", repository.as_uri())
    monkeypatch.setenv("RETRAINER_GIT_REF", pinned)
    monkeypatch.setenv("RETRAINER_GIT_COMMIT", "the-image-s-commit")

    directory = Path(locate_code()["directory"])

    assert (directory / "version.txt").read_text() == "first"
    assert os.environ["RETRAINER_GIT_COMMIT"] == pinned
    monkeypatch.setenv("RETRAINER_GIT_REF", "main")
    assert (Path(locate_code()["directory"]) / "version.txt").read_text() == "second"


def test_a_failed_clone_says_why_without_the_token_in_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.pull import locate_code

    port = free_port()  # nothing listens there
    monkeypatch.setenv("RETRAINER_GIT_URL", f"http://ci:ghp_s3cret@127.0.0.1:{port}/code.git")
    with pytest.raises(RuntimeError, match=r"git fetch .* failed: ") as failed:
        locate_code()
    assert "ghp_s3cret" not in str(failed.value)
    assert "http://***@127.0.0.1" in str(failed.value)


@pytest.mark.parametrize("kind", ["kubernetes", "docker"])
def test_a_container_pool_without_an_image_is_refused_before_deploying(kind: str) -> None:
    from prefect.client.schemas.objects import WorkPool

    from flows.pool_check import pool_problem

    template = json.loads((REPOSITORY / f"deploy/{kind}-gpu-job-template.json").read_text())
    assert "image" in template["variables"]["required"]  # a run without one is refused too
    pool = WorkPool(name="gpu", type=kind, base_job_template=template)
    problem = pool_problem("gpu", pool)
    assert problem and problem.startswith(f"work pool 'gpu' ({kind}) has no image")

    template["variables"]["properties"]["image"]["default"] = "registry.example.com/r:abc"
    assert pool_problem("gpu", pool.model_copy(update={"base_job_template": template})) is None


def test_a_process_pool_needs_no_image_and_a_missing_pool_says_how_to_create_it() -> None:
    from prefect.client.schemas.objects import WorkPool
    from prefect.workers.process import ProcessWorker

    from flows.pool_check import pool_problem

    process = WorkPool(
        name="local",
        type="process",
        base_job_template=ProcessWorker.get_default_base_job_template(),
    )
    assert pool_problem("local", process) is None
    assert "prefect work-pool create local --type process" in str(pool_problem("local", None))


def test_the_flow_takes_exactly_the_run_parameters_with_their_form_fields() -> None:
    from flows.retrain import retrain
    from retrainer.settings import RetrainParameters

    form = retrain.parameters.model_dump()["properties"]
    parameters = RetrainParameters.model_json_schema()["properties"]
    assert list(form) == list(parameters)  # the same names, in the same order
    for name, field in form.items():
        shown = {key: value for key, value in field.items() if key not in ("title", "position")}
        assert shown == {key: value for key, value in parameters[name].items() if key != "title"}
        assert "anyOf" not in shown, f"{name} would show as a None-or-value switch"


@pytest.mark.slow
def test_a_factory_copied_as_the_user_image_does_is_found_built_and_keyed_on_a_worker(
    tmp_path: Path,
) -> None:
    """deploy/Dockerfile.user-model's COPY and ENV, replayed in a folder: a fresh Python on the
    worker's environment finds the user's package, builds its factory and loads its callbacks."""
    dockerfile = (REPOSITORY / "deploy" / "Dockerfile.user-model").read_text()
    copied = re.search(r"^COPY (\S+) (\S+)$", dockerfile, re.MULTILINE)
    assert copied is not None
    image = tmp_path / "image"
    destination = image / copied[2].lstrip("/")
    shutil.copytree(REPOSITORY / "examples" / copied[1], destination)
    variables = dict(re.findall(r"(\w+)=(\S+)", dockerfile.split("\nENV ", 1)[1]))
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        **{name: value for name, value in variables.items() if name.startswith("RETRAINER_")},
        "PYTHONPATH": str(image / variables["PYTHONPATH"].lstrip("/")),
    }
    check = (
        "from retrainer.settings import load_settings\n"
        "from retrainer.preflight import check_user_code\n"
        "from retrainer.user_code import code_identity\n"
        "settings = load_settings()\n"
        "print(code_identity(settings.model_factory, settings.callbacks).model_factory)\n"
        "check_user_code(settings, 3)\n"
        "print('checked', settings.model_factory, settings.callbacks)\n"
    )
    answer = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert answer.returncode == 0, answer.stderr
    first, last = answer.stdout.strip().splitlines()[-2:]
    assert first.startswith("sha256:")
    assert last == "checked my_models.factories:compiled_cnn my_models.callbacks:nightly"
