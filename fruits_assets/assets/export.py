"""features_csv: the PCA features as one CSV file for the business team, as the seed produced."""


from typing import Any

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import functions as F

from fruits_assets.assets import checks
from fruits_assets.assets.pca import pca_features_parquet
from fruits_assets.partitions import registered_classes
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import filesystem, layout
from fruits_assets.storage.datasets import Datasets


@dg.asset(
    deps=[pca_features_parquet],
    group_name="export",
    kinds={"spark", "csv"},
    check_specs=[
        checks.spec(checks.ROWS_MATCH_FEATURES, "features_csv", "One CSV row per PCA feature row."),
        checks.spec(checks.CSV_COLUMNS_K, "features_csv", "path, label and pca_feature_1..k."),
        checks.spec(
            checks.LABELS_MATCH_CLASSES,
            "features_csv",
            "Its labels are exactly the classes under the input root.",
        ),
    ],
)
def features_csv(
    context: dg.AssetExecutionContext,
    storage: FruitsStorage,
    pyspark: LazyPySparkResource,
    step_launcher: dg.ResourceParam[Any],
) -> dg.MaterializeResult:
    """One CSV file: path, label, pca_feature_1 … pca_feature_k, sorted by label and path."""
    spark = pyspark.spark_session
    datasets = Datasets(spark, storage, context.run.run_id)
    features = datasets.read(layout.PCA_FEATURES_PARQUET)
    k = features.select(F.max(F.size("pca_features"))).first()[0] or 0
    columns = [F.col("pca_features")[i].alias(f"pca_feature_{i + 1}") for i in range(k)]
    table = features.select("path", "label", *columns).orderBy("label", "path")

    staging = layout.staging_dir(storage.output, context.run.run_id, layout.FEATURES_CSV)
    table.coalesce(1).write.option("header", True).csv(storage.spark_path(staging))
    part = next(
        filesystem.to_uri(staging, info.path)
        for info in filesystem.list_files(staging)
        if info.base_name.startswith("part-") and info.base_name.endswith(".csv")
    )
    # Swap in the new file only once Spark has written it whole.
    target = layout.csv_path(storage.output)
    filesystem.move(part, target)
    filesystem.delete_dir(staging)

    written = spark.read.option("header", True).csv(storage.spark_path(target))
    header = written.columns
    per_class = {r["label"]: r["count"] for r in written.groupBy("label").count().collect()}
    rows, expected_rows = sum(per_class.values()), features.count()
    expected_header = ["path", "label", *(f"pca_feature_{i + 1}" for i in range(k))]
    return dg.MaterializeResult(
        metadata={
            "num_rows": rows,
            "num_columns": len(header),
            "k": k,
            "path": dg.MetadataValue.path(target),
        },
        check_results=[
            checks.result(
                checks.ROWS_MATCH_FEATURES, rows == expected_rows, rows=rows, expected=expected_rows
            ),
            checks.result(
                checks.CSV_COLUMNS_K, header == expected_header, columns=len(header), k=k
            ),
            checks.labels_match(registered_classes(context.instance), set(per_class)),
        ],
    )
