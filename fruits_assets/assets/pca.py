"""pca_model and pca_features_parquet: a PCA sized for the target variance, and its projections."""

import base64

import dagster as dg
from pyspark.ml.feature import PCA, PCAModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import functions as F

from fruits_assets import checks, featurizer, filesystem, layout, pca_selection, spark_io, splits
from fruits_assets.assets.classes import current_features, features_weights
from fruits_assets.assets.common import SPARK_RESOURCES, counts_table
from fruits_assets.assets.features import mobilenet_features
from fruits_assets.resources.storage import FruitsStorage

VECTOR_COLUMN = "features_vector"
PCA_COLUMN = "pca_vector"


@dg.asset(
    deps=[mobilenet_features],
    group_name="pca",
    kinds={"spark", "sparkml"},
    required_resource_keys=SPARK_RESOURCES | {"pca_settings"},
    check_specs=[
        checks.spec(checks.PCA_K_BOUNDS, "pca_model", "1 <= k <= min(n_images - 1, 1280)."),
        checks.spec(
            checks.PCA_VARIANCE_REACHED, "pca_model", "The k components reach the target variance."
        ),
    ],
)
def pca_model(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Spark ML PCA on every class's features, with the smallest k reaching the target variance."""
    storage: FruitsStorage = context.resources.storage
    spark = context.resources.pyspark.spark_session
    current = current_features(spark, storage)
    weights_sha256 = features_weights(current.df)
    fit_rows, fit_on = splits.training_rows(current.df)
    vectors = fit_rows.select(array_to_vector("features").alias(VECTOR_COLUMN)).cache()
    n_rows = vectors.count()
    k_max = pca_selection.max_components(n_rows, featurizer.FEATURE_DIM)
    full = PCA(k=k_max, inputCol=VECTOR_COLUMN, outputCol=PCA_COLUMN).fit(vectors)
    explained = full.explainedVariance.toArray()
    target = context.resources.pca_settings.target_variance
    k, achieved = pca_selection.choose_k(explained, target)
    model = (
        full if k == k_max else PCA(k=k, inputCol=VECTOR_COLUMN, outputCol=PCA_COLUMN).fit(vectors)
    )
    vectors.unpersist()

    out = layout.pca_model_dir(storage.output)
    model.write().overwrite().save(storage.spark_path(out))
    scree = pca_selection.scree_png(explained, target, k)
    filesystem.write_bytes(filesystem.join(out, layout.SCREE_PLOT_NAME), scree)
    context.log.info(f"PCA: k={k} of at most {k_max} reaches {achieved:.4f} (target {target})")
    cumulative = explained.cumsum()
    milestones = {
        f"variance_at_k_{m}": float(cumulative[m - 1]) for m in (10, 50, 100, 200) if m <= k_max
    }
    return dg.MaterializeResult(
        metadata={
            "k": k,
            "k_max": k_max,
            "target_variance": target,
            "explained_variance": achieved,
            "num_rows": n_rows,
            "fit_on": fit_on,
            "features_weights_sha256": weights_sha256,
            "num_classes": len(current.discovered) - len(current.without_features),
            "classes_without_features": current.without_features,
            "stale_classes_ignored": current.stale,
            **milestones,
            "scree_plot": dg.MetadataValue.md(
                f"![scree](data:image/png;base64,{base64.b64encode(scree).decode()})"
            ),
            "path": dg.MetadataValue.path(out),
        },
        check_results=[
            checks.result(checks.PCA_K_BOUNDS, 1 <= k <= k_max, k=k, k_max=k_max),
            checks.result(
                checks.PCA_VARIANCE_REACHED,
                achieved >= target - 1e-9,
                achieved=achieved,
                target=target,
            ),
        ],
    )


def label_check(discovered: list[str], labels: set[str]) -> dg.AssetCheckResult:
    missing, extra = sorted(set(discovered) - labels), sorted(labels - set(discovered))
    return checks.result(
        checks.LABELS_MATCH_CLASSES,
        not missing and not extra,
        num_labels=len(labels),
        missing_classes=missing,
        unexpected_labels=extra,
    )


@dg.asset(
    deps=[pca_model, mobilenet_features],
    group_name="pca",
    kinds={"spark", "parquet"},
    required_resource_keys=SPARK_RESOURCES,
    check_specs=[
        checks.spec(checks.ROWS_MATCH_FEATURES, "pca_features_parquet", "One row per feature row."),
        checks.spec(checks.VECTOR_LENGTH_K, "pca_features_parquet", "Every vector has k values."),
        checks.spec(
            checks.LABELS_MATCH_CLASSES,
            "pca_features_parquet",
            "Its labels are exactly the classes under the input root.",
        ),
    ],
)
def pca_features_parquet(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """path, label and the k PCA features as array<float>, Parquet partitioned by label."""
    storage: FruitsStorage = context.resources.storage
    spark = context.resources.pyspark.spark_session
    current = current_features(spark, storage)
    model = PCAModel.load(storage.spark_path(layout.pca_model_dir(storage.output)))
    k = model.getK()
    projected = model.transform(
        current.df.select("path", "label", array_to_vector("features").alias(VECTOR_COLUMN))
    ).select("path", "label", vector_to_array(PCA_COLUMN, "float32").alias("pca_features"))
    out = layout.asset_dir(storage.output, layout.PCA_FEATURES_PARQUET)
    spark_io.write_whole(projected, storage.spark_path(out))

    written = spark.read.parquet(storage.spark_path(out))
    per_class = {r["label"]: r["count"] for r in written.groupBy("label").count().collect()}
    rows = sum(per_class.values())
    bad_length = written.where(F.size("pca_features") != k).count()
    n_features = current.df.count()
    return dg.MaterializeResult(
        metadata={
            "num_rows": rows,
            "k": k,
            "num_classes": len(per_class),
            "rows_per_class": counts_table(per_class, "rows"),
            "path": dg.MetadataValue.path(out),
        },
        check_results=[
            checks.result(
                checks.ROWS_MATCH_FEATURES, rows == n_features, rows=rows, features=n_features
            ),
            checks.result(checks.VECTOR_LENGTH_K, bad_length == 0, k=k, wrong_length=bad_length),
            label_check(current.discovered, set(per_class)),
        ],
    )
