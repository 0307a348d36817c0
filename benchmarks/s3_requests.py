"""What the steps' per-file S3 work costs in requests and time, on moto's S3 server.

    .venv/bin/python benchmarks/s3_requests.py --reps 3
    .venv/bin/python benchmarks/s3_requests.py --reps 3 --against ../old

moto's S3 server runs here on loopback; its log counts the requests, by kind. The Test split's
photos (2,115 in 141 classes) are put in a bucket once, `<root>/<class>/<file>.jpg`. Then,
each in a fresh process with this checkout's code (and `--against CHECKOUT`'s, through
`PYTHONPATH`), in alternating order:

- `photos`: one task of `labeled_images` on EMR, as Spark's Python worker runs it
  (`decoding.decoded_files`), over every photo: each read from its `s3://` URI, validated, and
  the accepted ones written back, a Parquet file per class;
- `listing`: `raw_images`' driver work on EMR, Dagster aside: the photos listed, the listing
  written as one Parquet file per class into the run's staging folder, the files moved into the
  table and committed (`Datasets.stage_rows`, `Datasets.publish_files`), as every step's
  publish does.

Each prints the scenario's wall seconds (imports excluded) and its requests, medians over
repetitions. Loopback has no network latency and moto no keep-alive: on AWS each request is a
round trip of milliseconds, so the counts say more about AWS than the seconds do.
`--latency-ms N` puts a relay in front of moto that holds each answer N ms before passing it on:
a stand-in for S3's round trip, to see what waits for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
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
if scenario == "photos":  # one task of the decode: its function, as Spark would call it
    import pyarrow as pa
    from fruits_assets.storage import class_files
    class Listing:
        def map_in_arrow(self, task, schema):
            self.task = task
    uris, output = payload
    listing = Listing()
    decoding.decoded_files(listing, output + "/accepted", output + "/rejected")
    labels = [uri.rsplit("/", 2)[-2] for uri in uris]
    batches = [pa.record_batch({"path": uris[i : i + 256], "label": labels[i : i + 256]})
               for i in range(0, len(uris), 256)]  # Spark's Arrow batches: 256 rows
    files = [row for out in listing.task(iter(batches)) for row in out.to_pylist()]
    assert sum(f[class_files.ROWS] for f in files) == len(uris), files[:3]
    assert not sum(f[decoding.REJECTIONS] for f in files), files
else:
    images, output = payload
    scan = discovery.scan(images)
    datasets = Datasets(None, FruitsStorage(images_root=images, output_root=output), "bench")
    staged = datasets.stage_rows(_listing_table(scan.images_of(set(scan.classes))), "raw_images")
    datasets.publish_files(staged, layout.RAW_IMAGES, scan.classes, RAW_SCHEMA)
print(json.dumps(time.perf_counter() - started))
"""


class Relay:
    """A TCP relay on loopback to `target` that holds each answer `delay` seconds (moto answers
    one request per connection)."""

    def __init__(self, target: tuple[str, int], delay: float):
        self.target, self.delay = target, delay
        self.server = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, self.delay), daemon=True
            ).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
        try:
            while data := source.recv(1 << 16):
                if delay:
                    time.sleep(delay)
                    delay = 0.0
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


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
    parser.add_argument("--latency-ms", type=float, default=0.0, help="each answer held so long")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
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
    if args.latency_ms:
        endpoint = f"http://127.0.0.1:{Relay((host, port), args.latency_ms / 1000).port}"
        print(f"each answer held {args.latency_ms:g} ms by a relay")
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
        (c, s): [] for c in checkouts for s in args.scenarios
    }
    for rep in range(args.reps):
        order = list(checkouts.items())
        for name, checkout in order if rep % 2 == 0 else order[::-1]:
            for scenario in args.scenarios:
                output = f"s3://{BUCKET}/out-{rep}-{name[:4]}"
                images = uris if scenario == "photos" else f"s3://{BUCKET}/photos"
                payload = [images, output]
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
