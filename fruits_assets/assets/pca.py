"""pca_model and pca_features_parquet: a PCA sized for the target variance, and its projections."""


from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pyspark.ml.feature import PCA, PCAModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import functions as F

from fruits_assets.assets import checks
from fruits_assets.assets.current_features import current_features, features_weights
from fruits_assets.assets.features import mobilenet_features
from fruits_assets.assets.metadata import counts_table, png_markdown
from fruits_assets.assets.publishing import Publication, publish_or_fail
from fruits_assets.ml import featurizer, pca, plots, splits
from fruits_assets.resources.ml_settings import PcaSettings
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import filesystem, layout
from fruits_assets.storage.datasets import Datasets

VECTOR_COLUMN = "features_vector"
PCA_COLUMN = "pca_vector"


@dg.asset(
    deps=[mobilenet_features],
    group_name="pca",
    kinds={"spark", "sparkml"},
    check_specs=[
        checks.spec(checks.PCA_K_BOUNDS, "pca_model", "1 <= k <= min(n_images - 1, 1280)."),
        checks.spec(
            checks.PCA_VARIANCE_REACHED, "pca_model", "The k components reach the target variance."
        ),
    ],
)
def pca_model(
    context: dg.AssetExecutionContext,
    storage: FruitsStorage,
    pyspark: LazyPySparkResource,
    pca_settings: PcaSettings,
    step_launcher: dg.ResourceParam[Any],
) -> dg.MaterializeResult:
    """Spark ML PCA on every class's features, with the smallest k reaching the target variance."""
    datasets = Datasets(pyspark.spark_session, storage, context.run.run_id)
    current = current_features(context, datasets)
    weights_sha256 = features_weights(current.df)
    fit_rows, fit_on = splits.training_rows(current.df)
    vectors = fit_rows.select(array_to_vector("features").alias(VECTOR_COLUMN)).cache()
    n_rows = vectors.count()
    k_max = pca.max_components(n_rows, featurizer.FEATURE_DIM)
    full = PCA(k=k_max, inputCol=VECTOR_COLUMN, outputCol=PCA_COLUMN).fit(vectors)
    explained = full.explainedVariance.toArray()
    target = pca_settings.target_variance
    k, achieved = pca.choose_k(explained, target)
    model = (
        full if k == k_max else PCA(k=k, inputCol=VECTOR_COLUMN, outputCol=PCA_COLUMN).fit(vectors)
    )
    vectors.unpersist()

    out = layout.pca_model_dir(storage.output)
    model.write().overwrite().save(storage.spark_path(out))
    scree = plots.scree_png(explained, target, k)
    filesystem.write_bytes(layout.scree_plot_path(storage.output), scree)
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
            "num_classes": len(current.classes) - len(current.without_features),
            "classes_without_features": current.without_features,
            "stale_classes_ignored": current.stale,
            **milestones,
            "scree_plot": png_markdown(scree, "scree"),
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


@dg.asset(
    deps=[pca_model, mobilenet_features],
    group_name="pca",
    kinds={"spark", "parquet"},
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
def pca_features_parquet(
    context: dg.AssetExecutionContext,
    storage: FruitsStorage,
    pyspark: LazyPySparkResource,
    step_launcher: dg.ResourceParam[Any],
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """path, label and the k PCA features as array<float>, Parquet partitioned by label."""
    spark = pyspark.spark_session
    datasets = Datasets(spark, storage, context.run.run_id)
    current = current_features(context, datasets)
    model = PCAModel.load(storage.spark_path(layout.pca_model_dir(storage.output)))
    k = model.getK()
    projected = model.transform(
        current.df.select("path", "label", array_to_vector("features").alias(VECTOR_COLUMN))
    ).select("path", "label", vector_to_array(PCA_COLUMN, "float32").alias("pca_features"))
    staged = datasets.stage(projected, layout.PCA_FEATURES_PARQUET)
    counts = staged.df.groupBy("label").agg(
        F.count("*").alias("rows"), F.sum((F.size("pca_features") != k).cast("int")).alias("bad")
    )
    collected = counts.collect()
    per_class = {r["label"]: r["rows"] for r in collected}
    rows = sum(per_class.values())
    bad_length = sum(r["bad"] or 0 for r in collected)
    n_features = current.df.count()
    yield from publish_or_fail(
        datasets,
        staged=[staged],
        publications=[Publication(layout.PCA_FEATURES_PARQUET, staged.df)],
        checks=[
            checks.result(
                checks.ROWS_MATCH_FEATURES, rows == n_features, rows=rows, features=n_features
            ),
            checks.result(checks.VECTOR_LENGTH_K, bad_length == 0, k=k, wrong_length=bad_length),
            checks.labels_match(current.classes, set(per_class)),
        ],
        metadata={
            "num_rows": rows,
            "k": k,
            "num_classes": len(per_class),
            "rows_per_class": counts_table(per_class, "rows"),
            "path": dg.MetadataValue.path(datasets.location(layout.PCA_FEATURES_PARQUET)),
        },
    )
