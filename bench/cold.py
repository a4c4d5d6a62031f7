"""Cold workers: the nightly `retrainer run` on a worker that keeps its disk against one that
starts empty every night (a Kubernetes or Docker job), side by side in one run, on a loopback S3
server (moto) behind a proxy that counts the reads of source images.

Each worker has its own model store, so each prepares and trains on its own; the data bucket is
shared. The first night is also run with the code before the prepared dataset (a git worktree of
BASELINE_COMMIT), as "today's". A no-op Prefect flow and one LIST pass give the floor a night
with nothing new can reach.

    make bench  (or: .venv/bin/python -m bench.cold) [--images 3000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from bench.common import jpeg_images, start_s3_server
from retrainer.storage import S3Store
from tests.flaky_proxy import FlakyProxy, RequestLog

# The last commit whose workers mirrored the source images to their disk.
BASELINE_COMMIT = "cd9da24"
REPOSITORY = Path(__file__).resolve().parent.parent
BUCKET = "bench-cold"
NO_OP_FLOW = "from prefect import flow, task\n" + (
    "@task\ndef nothing():\n    return None\n@flow\ndef no_op():\n    nothing()\nno_op()\n"
)


def put_images(files: dict[str, bytes]) -> None:
    client = boto3.client("s3")
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda item: client.put_object(
                    Bucket=BUCKET, Key=f"images/{item[0]}", Body=item[1]
                ),
                files.items(),
            )
        )


class Night:
    """One `retrainer run` in a fresh process: its wall time, source reads and outcome."""

    def __init__(self, night: str, worker: str, seconds: float, reads: int, outcome: str) -> None:
        self.night, self.worker, self.seconds, self.reads, self.outcome = (
            night,
            worker,
            seconds,
            reads,
            outcome,
        )


def run_night(
    night: str, worker: str, store: str, cache: Path, reads: RequestLog, code: Path = REPOSITORY
) -> Night:
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "RETRAINER_STORE_URL": f"s3://{BUCKET}/{store}",
        "RETRAINER_DATA_URL": f"s3://{BUCKET}/images",
        "RETRAINER_CACHE_DIR": str(cache),
        "RETRAINER_EPOCHS": "2",
        "RETRAINER_GIT_COMMIT": f"bench-{code.name}",
    }
    reads.clear()
    started = time.perf_counter()
    answer = subprocess.run(
        [sys.executable, "-m", "retrainer.cli", "run"],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    output = answer.stdout + answer.stderr
    outcome = next(
        (word for word in ("skipped", "promoted", "rejected") if word in answer.stdout.lower()),
        f"exit {answer.returncode}",
    )
    if answer.returncode not in (0, 1):
        print(output[-3000:], file=sys.stderr)
    return Night(night, worker, seconds, reads.count("GET", f"/{BUCKET}/images/"), outcome)


def timed_no_op_flow() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", NO_OP_FLOW], check=True, capture_output=True)
    return time.perf_counter() - started


def timed_listing() -> float:
    started = time.perf_counter()
    count = sum(1 for _ in S3Store(BUCKET, "images").list())
    assert count > 0
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3000)
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    server, endpoint = start_s3_server()
    reads = RequestLog()
    proxy = FlakyProxy(endpoint, reads)
    os.environ["AWS_ENDPOINT_URL"] = proxy.url
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    baseline = work / "baseline"
    try:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(baseline), BASELINE_COMMIT],
            cwd=REPOSITORY,
            check=True,
            capture_output=True,
        )
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        everything = jpeg_images(arguments.images * 11 // 10, classes=4, size=32)
        keys = sorted(everything)
        first, later = keys[: arguments.images], keys[arguments.images :]
        put_images({key: everything[key] for key in first})
        size_mb = sum(len(everything[key]) for key in first) / 1e6
        print(f"{len(first)} JPEGs ({size_mb:.0f} MB) in 4 classes at s3://{BUCKET}/images")

        def cold_cache() -> Path:
            return Path(tempfile.mkdtemp(dir=work, prefix="cold-"))

        warm_cache = work / "warm"
        # Today's code runs its first night twice, in turn with ours: first nights are the
        # longest runs, and this machine's speed drifts between them.
        nights = [
            run_night("first", "today's code", "baseline-1", cold_cache(), reads, baseline),
            run_night("first", "warm", "warm", warm_cache, reads),
            run_night("first", "today's code", "baseline-2", cold_cache(), reads, baseline),
            run_night("first", "cold", "cold", cold_cache(), reads),
            run_night("nothing new", "warm", "warm", warm_cache, reads),
            run_night("nothing new", "cold", "cold", cold_cache(), reads),
        ]
        put_images({key: everything[key] for key in later})
        nights += [
            run_night("10% new", "warm", "warm", warm_cache, reads),
            run_night("10% new", "cold", "cold", cold_cache(), reads),
        ]
        no_op = timed_no_op_flow()
        listing = timed_listing()
    finally:
        proxy.close()
        server.terminate()
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(baseline)],
            cwd=REPOSITORY,
            capture_output=True,
        )
        shutil.rmtree(work, ignore_errors=True)

    print("| night | worker | wall | source-image GETs | outcome |\n|---|---|---|---|---|")
    for night in nights:
        print(
            f"| {night.night} | {night.worker} | {night.seconds:.1f} s | {night.reads:,} | "
            f"{night.outcome} |"
        )
    print(f"| no-op Prefect flow | | {no_op:.1f} s | | |")
    print(f"| one LIST pass | | {listing:.1f} s | | |")
    by = {(night.night, night.worker): night for night in nights}
    today = [night.seconds for night in nights if night.worker == "today's code"]
    ours = [by["first", "warm"].seconds, by["first", "cold"].seconds]
    floor = no_op + listing
    idle = by["nothing new", "cold"]
    print(
        f"nothing new, cold / (no-op flow + LIST): {idle.seconds / floor:.2f} (target <= 1.3), "
        f"{idle.reads} source GETs (target 0)"
    )
    new_cold, new_warm = by["10% new", "cold"], by["10% new", "warm"]
    print(
        f"10% new, cold: source GETs / new objects: {new_cold.reads / len(later):.2f} "
        f"(target <= 1.2); time cold / warm: {new_cold.seconds / new_warm.seconds:.2f} "
        "(target <= 1.25)"
    )
    print(
        f"first night, ours / today's (mean of two each): {sum(ours) / sum(today):.2f} "
        "(target <= 1.1)"
    )


if __name__ == "__main__":
    main()
