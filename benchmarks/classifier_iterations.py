"""How many L-BFGS iterations does fruit_classifier need? Time, loss and held-out accuracy.

    .venv/bin/python benchmarks/classifier_iterations.py OUTPUT_ROOT [--iters 60 100 200]

Reads the `mobilenet_features` and `pca_features_parquet` of a `fruits run` (run it with
`--no-classifier` first), prepares the inputs exactly as `fruit_classifier` does (the same split,
centring and shrunk scaling) and fits Spark ML's multinomial logistic regression at each
iteration count and L2 strength, on the training rows held on one partition per core as the
asset holds them. One untimed short fit first, so the JVM's compilation is not charged to the
first configuration. Prints seconds, iterations run, final objective and held-out top-1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import describe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="output root of a `fruits run`")
    parser.add_argument("--iters", type=int, nargs="+", default=[60, 100, 200])
    parser.add_argument("--reg-params", type=float, nargs="+", default=[1e-4, 1e-3])
    args = parser.parse_args()

    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import StringIndexer
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from fruits_assets.ml import splits, training
    from fruits_assets.resources.ml_settings import ClassifierSettings
    from fruits_assets.resources.spark import local_spark_config
    from fruits_assets.settings import FruitsSettings

    print("machine:", json.dumps(describe()))
    config = local_spark_config(FruitsSettings())
    spark = SparkSession.builder.config(map={k: str(v) for k, v in config.items()}).getOrCreate()
    root = Path(args.output).resolve()
    features = spark.read.format("delta").load(f"file://{root}/mobilenet_features")
    pca_rows = spark.read.format("delta").load(f"file://{root}/pca_features_parquet")
    data, source = splits.with_split(
        pca_rows.join(features.select("path", "color_histogram", "features"), "path")
    )
    data = (
        StringIndexer(inputCol="label", outputCol="y", stringOrderType="alphabetAsc")
        .fit(data)
        .transform(data)
        .withColumn("x", array_to_vector("pca_features"))
        .withColumn("h", array_to_vector("color_histogram"))
    )
    cores = spark.sparkContext.defaultParallelism
    train = data.where(F.col("split") == splits.TRAIN).select("y", "x", "h").coalesce(cores)
    train = train.cache()
    preparation = PipelineModel(
        stages=training.input_stages(
            train, ClassifierSettings().variance_shrinkage, len(pca_rows.first()["pca_features"])
        )
    )
    prepared = preparation.transform(train).select("y", "z").cache()
    test = data.where(F.col("split") == splits.TEST)
    held_out = preparation.transform(test).select("y", "z").cache()
    n_train, n_test = prepared.count(), held_out.count()
    print(f"split: {source}; {n_train} training rows, {n_test} held out")
    training.softmax_regression(20).fit(prepared)  # warm-up, untimed

    print("\n| max_iter | L2 | s | iterations run | objective | held-out top-1 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for reg_param in args.reg_params:
        for iterations in args.iters:
            regression = training.softmax_regression(iterations)
            started = time.perf_counter()
            model = regression.fit(prepared, {regression.regParam: reg_param})
            seconds = time.perf_counter() - started
            hits = model.transform(held_out).where("prediction = y").count()
            summary = model.summary
            print(
                f"| {iterations} | {reg_param:g} | {seconds:.1f} | {summary.totalIterations} | "
                f"{summary.objectiveHistory[-1]:.5f} | {hits / n_test:.2%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
