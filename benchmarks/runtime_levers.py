"""Per-thread featurizer rates: TensorFlow vs the TFLite model, by batch size; decode and histogram.

    .venv/bin/python benchmarks/runtime_levers.py --images ../shared/data/fruits360/Test --reps 3

One process, one thread for every runtime (a Spark task slot's share), the same preprocessed
images for every model, so the rates are the model alone; decoding+resizing and the colour
histogram are timed on their own. Medians over --reps passes after one warm-up pass.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import describe  # noqa: E402
from tf_featurizer import TensorFlowFeaturizer  # noqa: E402

SHARED = Path(os.environ.get("FRUITS_SHARED_DIR", HERE.parent.parent / "shared"))
DEFAULT_WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_224_imagenet_dequant.h5"


def rate(run, count: int, reps: int) -> float:
    """Median images/s of `run()` over reps passes, after one warm-up pass."""
    run()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return count / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(SHARED / "data" / "fruits360" / "Test"))
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--count", type=int, default=256, help="images per pass")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from fruits_assets.ml import color, featurizer

    print("machine:", json.dumps(describe()))
    files = sorted(Path(args.images).rglob("*.jpg"))
    files = files[:: max(1, len(files) // args.count)][: args.count]
    contents = [f.read_bytes() for f in files]
    n = len(contents)
    pixels = np.stack([featurizer.preprocess(c) for c in contents])
    rows = [
        ("decode + resize to 224 (PIL)", rate(lambda: [featurizer.preprocess(c) for c in contents],
                                              n, args.reps)),
        ("colour histogram (decode included)", rate(lambda: [color.histogram(c) for c in contents],
                                                    n, args.reps)),
    ]  # fmt: skip

    def model_alone(runtime, batch: int) -> float:
        """The rate of `runtime.run_batch` over the preprocessed pixels, full batches only."""

        def run() -> None:
            for start in range(0, n - batch + 1, batch):
                runtime.run_batch(pixels[start : start + batch])

        return rate(run, n - n % batch, args.reps)

    model = featurizer.build_model(args.weights)
    for batch in (1, 16, 64):
        runtime = TensorFlowFeaturizer(args.weights, batch, model=model)
        rows.append((f"TensorFlow tf.function, batch {batch}", model_alone(runtime, batch)))
    for batch in (1, 2, 4, 8, 16):
        runtime = featurizer.Featurizer(featurizer.convert_to_tflite(model, batch), threads=1)
        rows.append((f"TFLite float32 XNNPACK, batch {batch}", model_alone(runtime, batch)))
    print(f"\n{n} images, 1 thread, median of {args.reps} passes\n")
    print("| step | images/s per thread |")
    print("| --- | ---: |")
    for name, value in rows:
        print(f"| {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
