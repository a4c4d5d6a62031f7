"""Fetch: an initial sync and an unchanged re-sync of 5,000 small JPEGs from a loopback S3 server,
side by side with `aws s3 sync` on the same bucket, in the same run.

    make bench  (or: .venv/bin/python -m bench.fetch) [--images 5000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from bench.common import jpeg_images, start_s3_server
from retrainer.fetching import fetch_data
from retrainer.storage import S3Store


def timed(action):
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def aws_sync(source: str, target: Path) -> int:
    answer = subprocess.run(
        [
            str(Path(sys.executable).parent / "aws"),
            "s3",
            "sync",
            "--only-show-errors",
            source,
            str(target),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return len(answer.stdout.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5000)
    arguments = parser.parse_args()

    server, endpoint = start_s3_server()
    work = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench-data")
        files = jpeg_images(arguments.images, classes=5, size=64)
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda item: client.put_object(
                        Bucket="bench-data", Key=f"images/{item[0]}", Body=item[1]
                    ),
                    files.items(),
                )
            )
        size_kb = sum(map(len, files.values())) / len(files) / 1024
        print(f"{len(files)} JPEGs of {size_kb:.1f} KB on average at {endpoint}")

        store = S3Store("bench-data", "images")
        ours_first, first = timed(lambda: fetch_data(store, work / "ours"))
        ours_again, again = timed(lambda: fetch_data(store, work / "ours"))
        aws_first, _ = timed(lambda: aws_sync("s3://bench-data/images", work / "aws"))
        aws_again, _ = timed(lambda: aws_sync("s3://bench-data/images", work / "aws"))

        print(f"{'':28} {'retrainer fetch':>16} {'aws s3 sync':>12}")
        print(f"{'initial sync, s':28} {ours_first:16.1f} {aws_first:12.1f}")
        print(f"{'unchanged re-sync, s':28} {ours_again:16.1f} {aws_again:12.1f}")
        print(f"objects downloaded: initial {first.downloaded}, re-sync {again.downloaded}")
        print(
            f"initial sync, aws time / retrainer time: {aws_first / ours_first:.2f} (target >= 1.0)"
        )
        print(f"re-sync / initial sync (retrainer): {ours_again / ours_first:.3f} (target < 0.2)")
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
