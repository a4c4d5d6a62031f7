"""Before `make deploy`: the work pool exists, and a container pool runs an image.

A Docker or Kubernetes pool without an `image` starts Prefect's own image, which has no
TensorFlow: every run would fail in its pull step with an unrelated import error. Prefect checks
required job variables only when a run is created, so this refuses at deploy time instead.
"""

from __future__ import annotations

import sys

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import WorkPool
from prefect.exceptions import ObjectNotFound


def pool_problem(name: str, pool: WorkPool | None) -> str | None:
    """What keeps the deployment from running on this pool, in one line; None when nothing."""
    if pool is None:
        return (
            f"work pool '{name}' does not exist: create it first (`prefect work-pool create {name} "
            "--type process` on one machine; with deploy/kubernetes-gpu-job-template.json or "
            "deploy/docker-gpu-job-template.json for GPU jobs: see the README, Deploying)"
        )
    variables = pool.base_job_template.get("variables", {}).get("properties", {})
    if "image" in variables and not variables["image"].get("default"):
        return (
            f"work pool '{name}' ({pool.type}) has no image, so its jobs would run Prefect's own "
            "image, which lacks TensorFlow: set the pool's `image` to the retrainer image (Work "
            "Pools > Edit in the UI, or `prefect work-pool update --base-job-template` with the "
            "template's image default set)"
        )
    return None


def main(argv: list[str]) -> int:
    (name,) = argv
    with get_client(sync_client=True) as client:
        try:
            pool: WorkPool | None = client.read_work_pool(name)
        except ObjectNotFound:
            pool = None
    if problem := pool_problem(name, pool):
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
