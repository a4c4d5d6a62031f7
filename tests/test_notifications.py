"""Automations for failed or rejected runs, and `retrainer serve`, against a real Prefect API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events import emit_event

from flows.notifications import FAILED_AUTOMATION, REJECTED_AUTOMATION
from flows.schedule import nightly_schedule
from retrainer.cli import main
from retrainer.events import model_event, model_resource
from tests.conftest import free_port

# Every test here needs a Prefect API server (about 30 s to start): the slow lane.
pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]
REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A real HTTP endpoint on loopback that records what it is sent."""
    received: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            received.append(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}/hook", received
    server.shutdown()


def sent_about(version: str, received: list[dict[str, object]]) -> list[dict[str, object]]:
    return [message for message in received if f"version {version} " in str(message["body"])]


def notify_through(url: str, block_name: str) -> None:
    """`retrainer notify` with a webhook block that posts each notification to `url`."""
    CustomWebhookNotificationBlock(
        name=block_name, url=url, json_data={"subject": "{{subject}}", "body": "{{body}}"}
    ).save(block_name, overwrite=True)
    assert main(["notify", "--block", f"custom-webhook/{block_name}"]) == 0


def test_notify_creates_both_automations_and_a_rejection_is_sent(
    webhook: tuple[str, list[dict[str, object]]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, received = webhook
    notify_through(url, "test-alerts")
    assert main(["notify", "--block", "custom-webhook/test-alerts"]) == 0  # replaces, no copies
    with get_client(sync_client=True) as client:
        for name in (FAILED_AUTOMATION, REJECTED_AUTOMATION):
            (automation,) = client.read_automations_by_name(name)
            assert automation.actions[0].type == "send-notification"

    emit_event(  # as the publish task emits it
        event=model_event("rejected"),
        resource=model_resource("demo"),
        payload={"message": "version v9 rejected: val_accuracy 0.7000 < 0.8000"},
    )
    deadline = time.monotonic() + 60
    # Other tests' nights may be rejected meanwhile: they share the Prefect API, and this one.
    while not sent_about("v9", received) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert received, "the automation sent nothing"
    assert "val_accuracy 0.7000 < 0.8000" in str(sent_about("v9", received)[0]["body"])


def test_notify_with_an_unknown_block_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["notify", "--block", "slack-webhook/nope"]) == 1
    assert "create it in the Prefect UI" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_registers_the_nightly_schedule(prefect_api_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api_url,
        "RETRAINER_STORE_URL": str(tmp_path / "store"),
        "RETRAINER_DATA_URL": str(tmp_path),
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "retrainer"), "serve", "--timezone", "Europe/Paris"],
        env=env,
        cwd=REPOSITORY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deployment = None
        deadline = time.monotonic() + 90
        while deployment is None and time.monotonic() < deadline:
            time.sleep(1)
            with get_client(sync_client=True) as client:
                try:
                    deployment = client.read_deployment_by_name("retrain/nightly-local")
                except Exception:
                    deployment = None
        assert deployment is not None, "serve registered no deployment"
        (schedule,) = deployment.schedules
        assert schedule.schedule.cron == nightly_schedule()["cron"]  # prefect.yaml's, once
        assert schedule.schedule.timezone == "Europe/Paris"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


def test_a_night_that_hits_its_timeout_is_notified(
    webhook: tuple[str, list[dict[str, object]]],
) -> None:
    from prefect import flow

    url, received = webhook
    notify_through(url, "test-timeouts")

    # The automation follows the flow's name: a night that outlives RETRAINER_FLOW_TIMEOUT_HOURS.
    @flow(name="retrain", timeout_seconds=1)
    def hung_night() -> None:
        time.sleep(5)

    state = hung_night(return_state=True)
    assert state.name == "TimedOut"
    with get_client(sync_client=True) as client:
        run_name = client.read_flow_run(state.state_details.flow_run_id).name
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(run_name in str(message["body"]) for message in received):
            break
        time.sleep(0.5)
    (sent,) = [message for message in received if run_name in str(message["body"])]
    assert "ended TimedOut" in str(sent["body"])
