"""fruit_classifier: softmax regression on PCA features + colour histograms, scored honestly."""

import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import numpy as np
from dagster_pyspark import LazyPySparkResource
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fruits_assets.assets import checks
from fruits_assets.assets.current_features import current_features
from fruits_assets.assets.features import FEATURES_SCHEMA
from fruits_assets.assets.metadata import png_markdown, rows_table
from fruits_assets.assets.pca import (
    CLASSES_FACT,
    PCA_FEATURES_SCHEMA,
    SIZE_FACT,
    PcaModel,
    pca_features_parquet,
)
from fruits_assets.assets.publishing import FilePublication, publish_or_fail
from fruits_assets.ml import plots, splits
from fruits_assets.ml.serving import Predictor
from fruits_assets.resources.ml_settings import ClassifierSettings
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import filesystem, layout
from fruits_assets.storage.datasets import Datasets, Staged

WORST_CLASSES_SHOWN = 12
SERVING_AUDIT_ROWS = 200
# What the classifier reads of mobilenet_features (joined with pca_features_parquet by path).
FEATURE_ROWS = T.StructType([FEATURES_SCHEMA[c] for c in ("path", "color_histogram", "features")])


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    deps=[pca_features_parquet],
    group_name="classifier",
    kinds={"spark", "sparkml"},
    check_specs=[
        checks.spec(
            checks.SERVING_MATCHES_SPARK,
            "fruit_classifier",
            "The serving export gives Spark's own probabilities on held-out images.",
        ),
        dg.AssetCheckSpec(
            checks.ACCURACY_FLOOR,
            asset="fruit_classifier",
            description="Top-1 accuracy on the held-out split reaches the configured floor.",
        ),
    ],
)
def fruit_classifier(
    context: dg.AssetExecutionContext,
    storage: FruitsStorage,
    pyspark: LazyPySparkResource,
    classifier_settings: ClassifierSettings,
    step_launcher: dg.ResourceParam[Any],
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Spark ML softmax regression fit on the training images (the dataset's Training folders,
    else all but a 1-in-5 hold-out per class), L2 chosen by CV there, scored on the held-out ones.

    Cross-validation runs when the classes or the searched L2 strengths differ from those of
    the published classifier (or `cross_validate="always"`); a rerun after new photos of known
    classes refits with the L2 strength chosen last time, starting from the published
    coefficients (`warm_start_iter` iterations instead of `max_iter` from zero).
    """
    # Spark ML's Python side loads here, and meanwhile in the run's background warm-up
    # (`spark.warm_up`), rather than with the code location: every run would wait for it.
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import StringIndexer, StringIndexerModel
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.ml.tuning import ParamGridBuilder

    from fruits_assets.ml import training

    spark = pyspark.spark_session
    settings = classifier_settings
    datasets = Datasets(spark, storage, context.run.run_id)
    current = current_features(context, datasets)
    if "color_histogram" not in datasets.columns(layout.MOBILENET_FEATURES):
        raise dg.Failure(
            description="mobilenet_features has no colour histograms (written by an older "
            "fruits_assets): rematerialize it, e.g. `fruits run` without --downstream-only"
        )
    weights_sha256 = current.weights_sha256()
    serving_model_path = layout.featurizer_model_path(storage.output, weights_sha256)
    if not filesystem.exists(serving_model_path):
        raise dg.Failure(
            description=f"{serving_model_path} is missing: rematerialize mobilenet_features "
            "(`fruits run` without --downstream-only)"
        )
    # Read from the tables' files by the Python workers: Spark's Delta would first rebuild its
    # own snapshot of each table (the steps commit them with the `deltalake` package), a few
    # Spark jobs and seconds of a run.
    histograms = datasets.frame(layout.MOBILENET_FEATURES, FEATURE_ROWS, current.classes)
    pca_rows = datasets.frame(layout.PCA_FEATURES_PARQUET, PCA_FEATURES_SCHEMA)
    # The split, the class index, the fit and the scoring all read these rows: joined once,
    # kept on local disk (not in the JVM's heap, whatever the number of images).
    # A shuffle join, whatever the sizes: the workers' rows come without Spark's size estimates,
    # and neither side is one to broadcast from the driver at scale.
    joined = pca_rows.join(histograms.hint("merge"), "path").persist(StorageLevel.DISK_ONLY)
    data, split_source = splits.with_split(joined, current.folders_split)
    known = datasets.recall(layout.PCA_FEATURES_PARQUET, CLASSES_FACT)
    if known and set(known) <= set(current.classes) - set(current.without_features):
        # As pca_features_parquet published them in this run: no Spark job to list them.
        labels = training.class_order(known)
        indexer = StringIndexerModel.from_labels(labels, inputCol="label", outputCol="y")
    else:
        by_class = StringIndexer(inputCol="label", outputCol="y", stringOrderType="alphabetAsc")
        indexer = by_class.fit(data)
    label_names = list(indexer.labelsArray[0])
    data = (
        indexer.transform(data)
        .withColumn("x", array_to_vector("pca_features"))
        .withColumn("h", array_to_vector("color_histogram"))
    )
    train = data.where(F.col("split") == splits.TRAIN).select(
        "y", "x", "h", training.fold_of(F.col("path"), settings.cv_folds).alias(training.FOLD)
    )
    if spark.sparkContext.master.startswith("local"):
        # One partition per core: each optimizer iteration is a Spark job whose tasks each
        # return a full gradient, so more partitions than cores only add tasks and gradients
        # to merge. (On a cluster the executors come and go: its partitioning is left alone.)
        train = train.coalesce(spark.sparkContext.defaultParallelism)
    train = train.cache()
    test = data.where(F.col("split") == splits.TEST)

    started = time.perf_counter()
    pca = PcaModel.load(datasets)
    projected_k = _projected_k(datasets, joined)
    if projected_k != pca.k:
        raise dg.Failure(
            description=f"pca_features_parquet holds projections on {projected_k} components "
            f"but pca_model has k={pca.k}: materialize pca_features_parquet (it follows "
            "pca_model), then the classifier"
        )
    preparation = training.input_stages(train, settings.variance_shrinkage, pca.k)
    prepared = (
        PipelineModel(stages=preparation).transform(train).select("y", "z", training.FOLD).cache()
    )
    scaling = training.input_scaling(preparation, pca.k)
    regression = training.softmax_regression(settings.max_iter)
    previous = _published(storage.output)
    reuse = (
        settings.cross_validate == "auto"
        and previous is not None
        and previous.labels == label_names
        and previous.reg_param in settings.reg_params
        and len(settings.reg_params) > 0
    )
    cv_accuracy: dict[str, float] = {}
    fit_start = "zero"
    if reuse or len(settings.reg_params) == 1:
        reg_param = previous.reg_param if reuse else settings.reg_params[0]
        estimator = regression.copy({regression.regParam: reg_param})
        why = "same classes" if reuse else "one L2 strength"
        carried = None
        if reuse and settings.warm_start_iter > 0:
            carried = _carried_over(context, previous, weights_sha256, pca, scaling)
        if carried is not None:
            # Near its optimum already: a few iterations from there beat max_iter from zero.
            estimator.setMaxIter(settings.warm_start_iter)
            estimator = training.start_from(estimator, *carried)
            fit_start = "the published classifier"
            context.log.info(
                f"refitting with regParam={reg_param} from the published classifier's "
                f"coefficients, {settings.warm_start_iter} iterations ({why}: no cross-validation)"
            )
        else:
            context.log.info(f"fitting with regParam={reg_param} ({why}: no cross-validation)")
        fitted = estimator.fit(prepared)
    else:
        grid = ParamGridBuilder().addGrid(regression.regParam, settings.reg_params).build()
        context.log.info(
            f"cross-validating {len(grid)} L2 strengths ({settings.cv_folds} folds) on Training"
        )
        try:
            search = training.cross_validated(regression, grid, settings.cv_folds, prepared)
        except training.EmptyFoldError as exc:
            raise dg.Failure(description=str(exc)) from exc
        fitted = search.bestModel
        reg_param = grid[int(np.argmax(search.avgMetrics))][regression.regParam]
        cv_accuracy = {
            f"regParam={m[regression.regParam]}": float(a)
            for m, a in zip(grid, search.avgMetrics, strict=True)
        }
    prepared.unpersist()
    summary = fitted.summary if fitted.hasSummary else None
    model = PipelineModel(stages=[*preparation, fitted])
    train_seconds = time.perf_counter() - started
    train_rows = train.count()
    train.unpersist()
    n_classes = len(label_names)

    scored = model.transform(test).select(
        "y", "features", "color_histogram", vector_to_array("probability").alias("p")
    )
    # One class index and probability vector per held-out image reach the driver (the metrics
    # need them all); image features only for the few rows the serving audit compares.
    rows = scored.select("y", "p").collect()
    if not rows:
        raise dg.Failure(
            description="No held-out image to score the classifier on (too few images)"
        )
    truth = np.array([r["y"] for r in rows], dtype=int)
    probabilities = np.array([r["p"] for r in rows])
    del rows
    predicted = probabilities.argmax(axis=1)
    top1 = training.top_k_accuracy(probabilities, truth, 1)
    top5 = training.top_k_accuracy(probabilities, truth, min(5, n_classes))
    recall = training.per_class_recall(predicted, truth, n_classes)
    order = [int(c) for c in np.argsort(np.nan_to_num(recall, nan=2.0))]
    worst = [c for c in order if recall[c] < 1.0][:WORST_CLASSES_SHOWN] or order[:1]

    # The serving export: everything `fruits predict` needs in one file, the featurizer that
    # computed the training features included (whatever --weights says now).
    predictor = Predictor(
        pc=pca.components.T,
        **scaling,
        coefficients=fitted.coefficientMatrix.toArray(),
        intercepts=fitted.interceptVector.toArray(),
        labels=label_names,
        weights_sha256=weights_sha256,
        featurizer_model=filesystem.read_bytes(serving_model_path),
        reg_param=float(reg_param),
    )
    staging = datasets.staging(layout.FRUIT_CLASSIFIER)
    staged_file = filesystem.join(staging, layout.PREDICTOR_FILE)
    predictor_path = layout.classifier_file(storage.output, layout.PREDICTOR_FILE)
    filesystem.write_bytes(staged_file, predictor.to_bytes())
    # The audit loads the written export and compares it with Spark's own probabilities.
    sample = scored.limit(SERVING_AUDIT_ROWS).collect()
    served = Predictor.from_bytes(filesystem.read_bytes(staged_file)).probabilities(
        np.array([r["features"] for r in sample]), np.array([r["color_histogram"] for r in sample])
    )
    gap = float(np.abs(served - np.array([r["p"] for r in sample])).max())

    joined.unpersist()
    confusion = plots.confusion_png(predicted, truth, label_names, worst)
    floor = settings.accuracy_floor
    yield from publish_or_fail(
        context,
        datasets,
        staged=[Staged(layout.FRUIT_CLASSIFIER, staging)],
        publications=[FilePublication(staged_file, predictor_path)],
        checks=[
            checks.result(
                checks.SERVING_MATCHES_SPARK,
                gap < 1e-4,
                max_probability_gap=gap,
                compared_images=len(sample),
            ),
            dg.AssetCheckResult(
                check_name=checks.ACCURACY_FLOOR,
                passed=top1 >= floor,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"top1_accuracy": top1, "floor": floor},
            ),
        ],
        metadata={
            "top1_accuracy": top1,
            "top5_accuracy": top5,
            "macro_f1": training.macro_f1(predicted, truth, n_classes),
            "num_classes": n_classes,
            "train_images": train_rows,
            "test_images": len(truth),
            "split": split_source,
            "model": "multinomial logistic regression on rescaled PCA features + colour histograms",
            "chosen_reg_param": float(reg_param),
            "cross_validated": bool(cv_accuracy),
            **({"cv_accuracy": cv_accuracy} if cv_accuracy else {}),
            "fit_started_from": fit_start,
            **(
                {
                    # The budget given; L-BFGS may record more entries than it when its line
                    # search fails and it restarts its history (a near-optimal start does that).
                    "fit_max_iter": int(fitted.getMaxIter()),
                    "fit_iterations": summary.totalIterations,
                    "final_objective": float(summary.objectiveHistory[-1]),
                }
                if summary is not None
                else {}
            ),
            "train_seconds": round(train_seconds, 1),
            "recall_per_class_worst_first": rows_table(
                [(label_names[c], f"{recall[c]:.3f}") for c in order if not np.isnan(recall[c])],
                ("class", "recall"),
            ),
            "confusion_worst_classes": png_markdown(confusion, "confusion"),
        },
    )


def _carried_over(
    context: dg.AssetExecutionContext,
    previous: Predictor,
    weights_sha256: str,
    pca: PcaModel,
    scaling: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray] | None:
    """The published classifier's coefficients on this fit's inputs, when they describe the
    same features (same featurizer weights, same dimensions); else None, and why is logged."""
    hist_dims = len(scaling["hist_mean"])
    same_shape = (
        previous.pc.shape[0] == pca.components.shape[1]
        and previous.hist_mean.shape == (hist_dims,)
        and previous.coefficients.shape[1] == previous.pc.shape[1] + hist_dims
    )
    if previous.weights_sha256 != weights_sha256 or not same_shape:
        context.log.info(
            "fitting from zero: the published classifier was trained on other features"
        )
        return None
    from fruits_assets.ml import training

    return training.carried_over(previous, pca.components.T, **scaling)


def _projected_k(datasets: Datasets, pca_rows: DataFrame) -> int:
    """The width of pca_features_parquet's vectors: as its step in this run published them,
    else read from one row of `pca_rows` (its rows, joined or not)."""
    kept = datasets.recall(layout.PCA_FEATURES_PARQUET, SIZE_FACT)
    if kept is not None and kept[1]:
        return kept[0]
    row = pca_rows.select(F.size("pca_features").alias("k")).first()
    return row["k"] if row is not None else 0


def _published(output_root: str) -> Predictor | None:
    """The classifier published last, if it can be read."""
    try:
        return Predictor.load(output_root)
    except (FileNotFoundError, OSError, ValueError):
        return None
