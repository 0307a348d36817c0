"""Featurization benchmark: the project's asset vs the seed notebook's approach vs plain TensorFlow.

    .venv/bin/python benchmarks/featurize.py --images ../shared/data/fruits360/Test --reps 3

Each (variant, repetition) runs in a fresh process, so no variant inherits another's warm model
or Spark workers. Timed: from weights on disk and a started Spark session to features written
(Spark variants) or in memory (plain TensorFlow / TFLite), model construction included. Peak
memory is the RSS of the whole process tree (driver, JVM, Python workers), sampled every 0.25 s.

The project converts the weights to a TFLite model once per weights file and caches it:
`project` runs with that cache filled (by an untimed conversion before the first repetition,
whose time is printed), `project_cold` with an empty cache each time (conversion timed).

`project_int8` and `tflite_int8` are the opt-in int8 featurizer (`--precision int8`). Each
`project_int8` repetition is the first int8 run of a new output root: it reads its calibration
sample from the accepted photos (timed), then finds the quantized model in the converter's cache
(filled by an untimed warm-up run before the first repetition). `tflite_int8` runs a model
quantized the same way on 128 photos of the input, converted before the first repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import PeakMemory, describe  # noqa: E402

SHARED = Path(os.environ.get("FRUITS_SHARED_DIR", HERE.parent.parent / "shared"))
DEFAULT_WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_224_imagenet_dequant.h5"
VARIANTS = {
    "project": "(a) mobilenet_features materialized by Dagster on local Spark",
    "project_cold": "(a') the same, TFLite conversion included (empty cache)",
    "seed": "(b) seed notebook: repartition(20), model rebuilt per task, model.predict",
    "tf": "(c) plain TensorFlow, one process, batches of 64, tf.function",
    "tf16": "(c') plain TensorFlow, one process, batches of 16",
    "tflite": "(d) plain TFLite (XNNPACK), one process, 2 threads, batch 1",
    "project_int8": "(a8) mobilenet_features at --precision int8, on local Spark",
    "tflite_int8": "(d8) plain TFLite int8 (XNNPACK), one process, 2 threads, batch 1",
}


def run_project(images: str, weights: str, workdir: str, precision: str = "float32") -> int:
    import dagster as dg

    from fruits_assets import runner
    from fruits_assets.definitions import build_definitions
    from fruits_assets.partitions import range_tags
    from fruits_assets.settings import FruitsSettings

    instance = dg.DagsterInstance.ephemeral()
    settings = FruitsSettings.from_env(
        images=images, output=workdir, weights=weights, precision=precision
    )
    plan = runner.plan(settings, instance)
    job = build_definitions(settings).resolve_implicit_global_asset_job_def()
    tags = range_tags(plan.classes[0], plan.classes[-1])

    def materialize(*names: str) -> dg.ExecuteInProcessResult:
        selection = [dg.AssetKey(name) for name in names]
        result = job.execute_in_process(instance=instance, asset_selection=selection, tags=tags)
        assert result.success
        return result

    materialize("raw_images", "labeled_images")  # setup, not timed
    global STARTED
    STARTED = time.perf_counter()
    result = materialize("mobilenet_features")
    events = result.get_asset_materialization_events()
    return sum(int(e.materialization.metadata["num_rows"].value) for e in events)


def run_seed(images: str, weights: str, workdir: str) -> int:
    import seed_style

    from fruits_assets.resources.cores import available_cores

    spark = seed_style.seed_session(available_cores())
    global STARTED
    STARTED = time.perf_counter()
    features = seed_style.featurize(spark, images, weights)
    features.write.mode("overwrite").parquet(os.path.join(workdir, "features"))
    return spark.read.parquet(os.path.join(workdir, "features")).count()


def run_in_process(images: str, make_model) -> int:
    """Featurize every image in this process, 256 files read at a time; the clock starts
    before `make_model()`, so building the model counts."""
    import numpy as np

    files = sorted(Path(images).rglob("*.jpg"))
    global STARTED
    STARTED = time.perf_counter()
    model = make_model()
    step = 256
    out = [model([f.read_bytes() for f in files[i : i + step]]) for i in range(0, len(files), step)]
    return int(np.concatenate(out).shape[0])


def run_tf(images: str, weights: str, workdir: str, batch: int = 64) -> int:
    from tf_featurizer import TensorFlowFeaturizer

    return run_in_process(images, lambda: TensorFlowFeaturizer(weights, batch))


def run_tflite(images: str, weights: str, workdir: str) -> int:
    """The project's runtime alone: its cached TFLite model, 2 XNNPACK threads, no Spark."""
    from fruits_assets.ml import featurizer

    info = featurizer.resolve_weights(weights)
    return run_in_process(
        images, lambda: featurizer.Featurizer(featurizer.tflite_model(info, 1)[0], threads=2)
    )


def calibration_photos(images: str) -> list[bytes]:
    """128 photos spread over the input, in a fixed order (for `tflite_int8`)."""
    files = sorted(Path(images).rglob("*.jpg"))
    return [f.read_bytes() for f in files[:: max(1, len(files) // 128)][:128]]


def run_tflite_int8(images: str, weights: str, workdir: str) -> int:
    """The int8 model alone, 2 XNNPACK threads, no Spark (converted before: a cache hit)."""
    from fruits_assets.ml import featurizer

    info = featurizer.resolve_weights(weights)
    model = featurizer.int8_model(info, 1, calibration_photos(images))[0]
    return run_in_process(images, lambda: featurizer.Featurizer(model, threads=2))


def child(variant: str, images: str, weights: str, result_path: str) -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench_{variant}_") as workdir:
        runner = {
            "project": run_project,
            "project_cold": run_project,
            "seed": run_seed,
            "tf": run_tf,
            "tf16": lambda *a: run_tf(*a, batch=16),
            "tflite": run_tflite,
            "project_int8": lambda *a: run_project(*a, precision="int8"),
            "tflite_int8": run_tflite_int8,
        }[variant]
        n = runner(images, weights, workdir)
        seconds = time.perf_counter() - STARTED
    Path(result_path).write_text(json.dumps({"images": n, "seconds": seconds}))


def measure(variant: str, images: str, weights: str, cache: str) -> dict:
    with (
        tempfile.NamedTemporaryFile(suffix=".json") as result,
        tempfile.TemporaryDirectory(prefix="bench_cold_cache_") as cold_cache,
    ):
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "FRUITS_CACHE_DIR": cold_cache if variant == "project_cold" else cache,
        }
        command = [sys.executable, __file__, "--child", variant, "--images", images,
                   "--weights", weights, "--result", result.name]  # fmt: skip
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        with PeakMemory(process.pid) as memory:
            _, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{stderr[-4000:]}")
        data = json.loads(Path(result.name).read_text())
    data.update(
        peak_rss_mib=memory.peak / 2**20,
        process_seconds=time.perf_counter() - started,
        images_per_second=data["images"] / data["seconds"],
    )
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(SHARED / "data" / "fruits360" / "Test"))
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--convert-int8", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    images, weights = str(Path(args.images).resolve()), str(Path(args.weights).resolve())
    if args.child:
        child(args.child, images, weights, args.result)
        return
    if args.convert_int8:
        from fruits_assets.ml import featurizer

        featurizer.int8_model(featurizer.resolve_weights(weights), 1, calibration_photos(images))
        return

    machine = describe()
    print("machine:", json.dumps(machine))
    cache = tempfile.mkdtemp(prefix="bench_cache_")
    started = time.perf_counter()
    env = {**os.environ, "FRUITS_CACHE_DIR": cache, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", CONVERT, weights], check=True, env=env)
    print(f"one-off TFLite conversion (fresh process, TensorFlow import included): "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    if "tflite_int8" in args.variants:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--convert-int8", "--images", images, "--weights", weights],
            check=True,
            env=env,
        )
        print(f"one-off int8 conversion for tflite_int8: {time.perf_counter() - started:.1f} s")
    if "project_int8" in args.variants:  # fills the cache with the asset's own calibration
        measure("project_int8", images, weights, cache)
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for rep in range(args.reps):  # interleaved, so drift in the machine hits every variant
        for variant in args.variants:
            runs[variant].append(measure(variant, images, weights, cache))
            r = runs[variant][-1]
            print(f"rep {rep + 1} {variant:8} {r['images']} images {r['seconds']:7.1f} s "
                  f"{r['images_per_second']:6.1f} img/s peak {r['peak_rss_mib']:7.0f} MiB",
                  flush=True)  # fmt: skip
    summary = {
        v: {
            "images": rs[0]["images"],
            "median_seconds": statistics.median(r["seconds"] for r in rs),
            "median_images_per_second": statistics.median(r["images_per_second"] for r in rs),
            "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
        }
        for v, rs in runs.items()
    }
    print("\n| variant | images | median s | median images/s | median peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for v, s in summary.items():
        cells = (s["images"], f"{s['median_seconds']:.1f}", f"{s['median_images_per_second']:.1f}")
        print(
            f"| {VARIANTS[v]} | "
            + " | ".join(map(str, cells))
            + f" | {s['median_peak_rss_mib']:.0f} |"
        )
    rate = {v: s["median_images_per_second"] for v, s in summary.items()}
    print()
    for label, a, b, form in RATIOS:
        if a in rate and b in rate:
            print(f"{label:33} {form.format(rate[a] / rate[b])}")
    shutil.rmtree(cache, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "runs": runs}, indent=1))


STARTED = 0.0
# The ratios printed when both variants ran: (label, numerator, denominator, format).
RATIOS = (
    ("a/b (project / seed-style):", "project", "seed", "{:.2f}x"),
    ("a'/b (cold cache / seed-style):", "project_cold", "seed", "{:.2f}x"),
    ("a/c (project / plain TF ceiling):", "project", "tf", "{:.0%}"),
    ("a/c' (project / plain TF b16):", "project", "tf16", "{:.0%}"),
    ("a/d (project / plain TFLite):", "project", "tflite", "{:.0%}"),
    ("a8/d8 (int8 / plain TFLite int8):", "project_int8", "tflite_int8", "{:.0%}"),
    ("a8/a (int8 / float32 project):", "project_int8", "project", "{:.2f}x"),
    ("d8/d (int8 / float32 TFLite):", "tflite_int8", "tflite", "{:.2f}x"),
)
CONVERT = (
    "import sys; from fruits_assets.ml import featurizer; "
    "featurizer.tflite_model(featurizer.resolve_weights(sys.argv[1]), 1)"
)

if __name__ == "__main__":
    main()
