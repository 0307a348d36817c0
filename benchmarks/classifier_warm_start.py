"""A classifier refit from the published coefficients vs from zero: time, objective, accuracy.

    .venv/bin/fruits run --images IMAGES --output out --weights WEIGHTS
    # add photos of known classes under IMAGES, then refresh everything but the classifier:
    .venv/bin/fruits run --images IMAGES --output out --weights WEIGHTS --classes "Kiwi 1" \\
        --no-classifier
    .venv/bin/python benchmarks/classifier_warm_start.py out [--iters 5 10 20] [--reps 3]

The published classifier (`out/fruit_classifier/predictor.npz`) is then one fit behind the data,
as `fruit_classifier` finds it on a rerun. Prepares the inputs exactly as the asset does (same
split, refitted PCA, centring and shrunk scaling), carries the published coefficients over to
them, and fits Spark ML's multinomial logistic regression from zero (`max_iter`, the default
100) and from the carried-over coefficients at each iteration count, with the published L2
strength. One untimed short fit first, so the JVM's compilation is not charged to the first
configuration. Prints the median seconds over `--reps`, the iterations run, the first and last
objective and the held-out top-1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import describe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="output root of a `fruits run` (see above)")
    parser.add_argument("--iters", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import StringIndexer
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from fruits_assets.ml import splits, training
    from fruits_assets.ml.serving import Predictor
    from fruits_assets.resources.ml_settings import ClassifierSettings
    from fruits_assets.resources.spark import local_spark_config
    from fruits_assets.settings import FruitsSettings

    print("machine:", json.dumps(describe()))
    settings = ClassifierSettings()
    config = local_spark_config(FruitsSettings())
    spark = SparkSession.builder.config(map={k: str(v) for k, v in config.items()}).getOrCreate()
    root = Path(args.output).resolve()
    features = spark.read.format("delta").load(f"file://{root}/mobilenet_features")
    pca_rows = spark.read.format("delta").load(f"file://{root}/pca_features_parquet")
    row = spark.read.format("delta").load(f"file://{root}/pca_model").first()
    pc = np.array(row["components"], dtype=np.float64).T
    data, source = splits.with_split(
        pca_rows.join(features.select("path", "color_histogram", "features"), "path")
    )
    indexer = StringIndexer(inputCol="label", outputCol="y", stringOrderType="alphabetAsc")
    indexer = indexer.fit(data)
    data = (
        indexer.transform(data)
        .withColumn("x", array_to_vector("pca_features"))
        .withColumn("h", array_to_vector("color_histogram"))
    )
    cores = spark.sparkContext.defaultParallelism
    train = data.where(F.col("split") == splits.TRAIN).select("y", "x", "h").coalesce(cores)
    train = train.cache()
    stages = training.input_stages(train, settings.variance_shrinkage, pc.shape[1])
    preparation = PipelineModel(stages=stages)
    prepared = preparation.transform(train).select("y", "z").cache()
    held_out = preparation.transform(data.where(F.col("split") == splits.TEST))
    held_out = held_out.select("y", "z").cache()
    n_train, n_test = prepared.count(), held_out.count()
    print(f"split: {source}; {n_train} training rows, {n_test} held out")

    previous = Predictor.load(str(root))
    if previous.labels != list(indexer.labelsArray[0]):
        sys.exit("the published classifier has other classes: a rerun would cross-validate")
    carried = training.carried_over(previous, pc, **training.input_scaling(stages, pc.shape[1]))
    print(f"published: k={previous.pc.shape[1]}, L2 {previous.reg_param:g}; now k={pc.shape[1]}")
    training.softmax_regression(20).setRegParam(previous.reg_param).fit(prepared)  # warm-up

    def fit(iterations: int, warm: bool) -> tuple[list[float], object]:
        seconds, model = [], None
        for _ in range(args.reps):
            regression = training.softmax_regression(iterations).setRegParam(previous.reg_param)
            if warm:
                regression = training.start_from(regression, *carried)
            started = time.perf_counter()
            model = regression.fit(prepared)
            seconds.append(time.perf_counter() - started)
        return seconds, model

    print("\n| start | max_iter | s (median) | iterations run | first objective | last objective "
          "| held-out top-1 |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    runs = [("zero", settings.max_iter, False)] + [("published", n, True) for n in args.iters]
    for start, iterations, warm in runs:
        seconds, model = fit(iterations, warm)
        history = model.summary.objectiveHistory
        hits = model.transform(held_out).where("prediction = y").count()
        print(
            f"| {start} | {iterations} | {statistics.median(seconds):.1f} | "
            f"{model.summary.totalIterations} | {history[0]:.7f} | {history[-1]:.7f} | "
            f"{hits / n_test:.2%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
