"""What the steps' per-file S3 work costs in requests and time, on moto's S3 server.

    .venv/bin/python benchmarks/s3_requests.py --reps 3
    .venv/bin/python benchmarks/s3_requests.py --reps 3 --against ../old

moto's S3 server runs here on loopback; its log counts the requests, by kind. The Test split's
photos (2,115 in 141 classes) are put in a bucket once, `<root>/<class>/<file>.jpg`. Then,
each in a fresh process with this checkout's code (and `--against CHECKOUT`'s, through
`PYTHONPATH`), in alternating order:

- `photos`: every photo read and validated as `labeled_images`' Spark workers do on EMR
  (`decoding.decode_file` on its `s3://` URI);
- `listing`: `raw_images`' driver work on EMR, Dagster aside: the photos listed, the listing
  written as one Parquet file per class into the run's staging folder, the files moved into the
  table and committed (`Datasets.stage_rows`, `Datasets.publish_files`), as every step's
  publish does.

Each prints the scenario's wall seconds (imports excluded) and its requests, medians over
repetitions. Loopback has no network latency and moto no keep-alive: on AWS each request is a
round trip of milliseconds, so the counts say more about AWS than the seconds do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from end_to_end import TEST  # noqa: E402
from machine import describe  # noqa: E402

BUCKET = "fruits-bench"
SCENARIOS = ("photos", "listing")

# Runs in a fresh process: the checkout's code on PYTHONPATH, the URIs on stdin.
CHILD = """
import json, sys, time
scenario, payload = json.load(sys.stdin)
from fruits_assets.assets.images import RAW_SCHEMA, _listing_table
from fruits_assets.ml import decoding
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import discovery, layout
from fruits_assets.storage.datasets import Datasets
started = time.perf_counter()
if scenario == "photos":
    bad = [d.reason for d in map(decoding.decode_file, payload) if not d.ok]
    assert not bad, bad[:3]
else:
    images, output = payload
    scan = discovery.scan(images)
    datasets = Datasets(None, FruitsStorage(images_root=images, output_root=output), "bench")
    staged = datasets.stage_rows(_listing_table(scan.images_of(set(scan.classes))), "raw_images")
    datasets.publish_files(staged, layout.RAW_IMAGES, scan.classes, RAW_SCHEMA)
print(json.dumps(time.perf_counter() - started))
"""


class Requests(logging.Handler):
    """Counts moto's request log lines (one per request), by HTTP method."""

    def __init__(self) -> None:
        super().__init__()
        self.methods: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        method = next((m for m in ("GET", "HEAD", "POST", "PUT", "DELETE") if f"{m} /" in line), "")
        self.methods[method or "other"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another checkout, run alike")
    args = parser.parse_args()
    print("machine:", json.dumps(describe()))
    import boto3
    from moto.server import ThreadedMotoServer

    requests = Requests()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(requests)
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    env = {**os.environ, **aws, "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **{
        "aws_access_key_id": "bench", "aws_secret_access_key": "bench"})  # fmt: skip
    s3.create_bucket(Bucket=BUCKET)
    photos = sorted(TEST.glob("*/*.jpg"))
    for photo in photos:
        s3.put_object(Bucket=BUCKET, Key=f"photos/{photo.parent.name}/{photo.name}",
                      Body=photo.read_bytes())  # fmt: skip
    uris = [f"s3://{BUCKET}/photos/{p.parent.name}/{p.name}" for p in photos]
    classes = len({photo.parent.name for photo in photos})
    print(f"{len(uris)} photos of {classes} classes in s3://{BUCKET}/photos (moto)")

    checkouts = {"this checkout": HERE.parent}
    if args.against:
        checkouts["--against"] = args.against.resolve()
    results: dict[tuple[str, str], list[tuple[float, Counter[str]]]] = {
        (c, s): [] for c in checkouts for s in SCENARIOS
    }
    for rep in range(args.reps):
        order = list(checkouts.items())
        for name, checkout in order if rep % 2 == 0 else order[::-1]:
            for scenario in SCENARIOS:
                output = f"s3://{BUCKET}/out-{rep}-{name[:4]}"
                payload = uris if scenario == "photos" else [f"s3://{BUCKET}/photos", output]
                before = Counter(requests.methods)
                done = subprocess.run(
                    [sys.executable, "-c", CHILD],
                    input=json.dumps([scenario, payload]),
                    env={**env, "PYTHONPATH": str(checkout)},
                    cwd=checkout,  # `python -c` puts its folder first on the path
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                time.sleep(0.5)  # moto logs a request once it has answered it
                made = Counter(requests.methods)
                made.subtract(before)
                seconds = json.loads(done.stdout)
                results[name, scenario].append((seconds, +made))
                print(f"rep {rep + 1} {name:14} {scenario:8} {seconds:6.2f} s"
                      f" {sum(made.values()):6} requests {dict(+made)}")  # fmt: skip
    per = {"photos": (len(uris), "photo"), "listing": (classes, "class")}
    print("\n| checkout | scenario | s (median) | requests (median) | per | by kind (median) |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for (name, scenario), runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        total = statistics.median(sum(r[1].values()) for r in runs)
        kinds = sorted({k for r in runs for k in r[1]})
        by_kind = ", ".join(f"{k} {statistics.median(r[1][k] for r in runs):g}" for k in kinds)
        n, unit = per[scenario]
        print(f"| {name} | {scenario} | {seconds:.2f} | {total:g} | {total / n:.2f} a {unit} |"
              f" {by_kind} |")  # fmt: skip
    server.stop()


if __name__ == "__main__":
    main()
