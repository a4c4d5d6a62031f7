"""Automations that tell people when a nightly retrain failed or its model was rejected.

The notification itself goes through a Prefect notification block the team creates once in the UI
(Slack, Teams, e-mail, a webhook), so no webhook URL or other secret passes through this code.
"""

from __future__ import annotations

from prefect.automations import Automation, EventTrigger, SendNotification
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from retrainer.errors import BadInput
from retrainer.events import EVENT_PREFIX, REJECTED_EVENT

FLOW_NAME = "retrain"
FAILED_AUTOMATION = "retrainer: a retrain run failed"
REJECTED_AUTOMATION = "retrainer: a candidate model was rejected"


def notification_automations(block_document_id: object) -> list[Automation]:
    failed = Automation(
        name=FAILED_AUTOMATION,
        description="A run of the retrain flow ended Failed, Crashed or TimedOut.",
        trigger=EventTrigger(
            # A run stopped at RETRAINER_FLOW_TIMEOUT_HOURS ends TimedOut, a state of its own.
            expect={
                "prefect.flow-run.Failed",
                "prefect.flow-run.Crashed",
                "prefect.flow-run.TimedOut",
            },
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME},
            posture="Reactive",
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject="retrainer: run {{ flow_run.name }} failed",
                body="Flow run {{ flow_run.name }} of 'retrain' ended {{ flow_run.state.name }}: "
                "{{ flow_run.state.message }}",
            )
        ],
    )
    rejected = Automation(
        name=REJECTED_AUTOMATION,
        description="The gate rejected a candidate model; the champion is unchanged.",
        trigger=EventTrigger(
            expect={REJECTED_EVENT},
            match={"prefect.resource.id": EVENT_PREFIX + "*"},
            posture="Reactive",
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject="retrainer: candidate for {{ event.resource.name }} rejected",
                body="{{ event.payload.message }}",
            )
        ],
    )
    return [failed, rejected]


def create_notification_automations(block: str) -> list[str]:
    """Create (or replace) both automations, sending through the block `type-slug/name`."""
    block_type, _, block_name = block.partition("/")
    if not block_type or not block_name:
        raise BadInput(f"--block '{block}' must look like type/name, e.g. slack-webhook/ml-alerts")
    names = []
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(block_name, block_type)
        except ObjectNotFound:
            raise BadInput(
                f"no notification block '{block}': create it in the Prefect UI (Blocks) first"
            ) from None
        block_document_id = document.id
        for automation in notification_automations(block_document_id):
            for existing in client.read_automations_by_name(automation.name):
                client.delete_automation(existing.id)
            automation.create()
            names.append(automation.name)
    return names
