"""pca_model and pca_features_parquet: a PCA sized for the target variance, and its projections."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from fruits_assets.assets import checks
from fruits_assets.assets.current_features import current_features
from fruits_assets.assets.features import mobilenet_features
from fruits_assets.assets.metadata import counts_table, png_markdown
from fruits_assets.assets.publishing import StagedFilesPublication, publish_or_fail
from fruits_assets.assets.training_moments import training_moments
from fruits_assets.ml import featurizer, pca, plots
from fruits_assets.resources.ml_settings import PcaSettings
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import class_files, layout
from fruits_assets.storage.datasets import Datasets, Staged

# (k, rows) of a published pca_features_parquet, as `Datasets.remember` keeps them.
SIZE_FACT = "k and rows"
# The classes of a published pca_features_parquet (each with rows), likewise.
CLASSES_FACT = "classes"
# Why a class of the input root may have no feature rows, and what to do about it.
NOT_FEATURIZED = (
    "mobilenet_features has none of their rows: featurize them with `fruits run` without "
    "--classes (in the UI: materialize their mobilenet_features partitions) or, if every "
    "photo of a class was rejected, see labeled_images/rejected"
)

# One row per published model: the PCA's components and how k was chosen.
PCA_MODEL_SCHEMA = T.StructType(
    [
        T.StructField("k", T.IntegerType(), False),
        T.StructField("k_max", T.IntegerType(), False),
        T.StructField("target_variance", T.DoubleType(), False),
        T.StructField("explained_variance", T.DoubleType(), False),
        T.StructField("explained_variance_ratio", T.ArrayType(T.DoubleType()), False),
        T.StructField("components", T.ArrayType(T.ArrayType(T.DoubleType())), False),
        T.StructField("num_rows", T.LongType(), False),
        T.StructField("fit_on", T.StringType(), False),
        T.StructField("weights_sha256", T.StringType(), False),
        T.StructField("scree_png", T.BinaryType(), False),
    ]
)
# The table's columns, nullable as Delta declares every column Spark writes.
PCA_MODEL_TABLE = T.StructType([T.StructField(f.name, f.dataType) for f in PCA_MODEL_SCHEMA])


@dataclass(frozen=True)
class PcaModel:
    """The published PCA: `components` is (k, 1280), Spark ML's `pc` transposed."""

    k: int
    components: np.ndarray
    weights_sha256: str

    FACT = "model"  # as `Datasets.remember` keeps it for the run's next steps

    @classmethod
    def load(cls, datasets: Datasets) -> "PcaModel":
        """The published model (as this process published it, while it is still the latest)."""
        return datasets.remembered(layout.PCA_MODEL, cls.FACT, lambda: cls._read(datasets))

    @classmethod
    def _read(cls, datasets: Datasets) -> "PcaModel":
        row = datasets.read(layout.PCA_MODEL).select("k", "components", "weights_sha256").first()
        if row is None:
            raise dg.Failure(description="pca_model holds no model: materialize pca_model")
        return cls(row["k"], np.array(row["components"], dtype=np.float64), row["weights_sha256"])


def _model_table(row: tuple) -> pa.Table:
    """The model's one row as an Arrow table of `PCA_MODEL_SCHEMA`: the components' 1280 x k
    doubles as one columnar buffer, written by the driver itself (`Datasets.stage_rows`)."""
    fields = PCA_MODEL_SCHEMA.fields
    frame = pd.DataFrame({f.name: [v] for f, v in zip(fields, row, strict=True)})
    return pa.Table.from_pandas(
        frame, schema=to_arrow_schema(PCA_MODEL_SCHEMA), preserve_index=False
    )


def _model_audit(staged: Staged) -> dict[str, Any]:
    """What the checks need of the model's file as staged, read back: k, its explained
    variance, its components' rows and whether each has a value per feature."""
    ((_, back),) = class_files.read_back(
        staged.location, staged.files, ["k", "explained_variance", "components"]
    )
    components = back.column("components").combine_chunks()
    widths = pc.list_value_length(components.flatten())
    return {
        "k": back.column("k")[0].as_py(),
        "explained_variance": back.column("explained_variance")[0].as_py(),
        "rows": pc.list_value_length(components)[0].as_py(),
        "widths_ok": pc.all(pc.equal(widths, featurizer.FEATURE_DIM)).as_py() is not False,
    }


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    deps=[mobilenet_features],
    group_name="pca",
    kinds={"spark", "numpy"},
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
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The PCA of every class's features (Spark computes the covariance, numpy its eigenvectors),
    with the smallest k reaching the target variance."""
    spark = pyspark.spark_session
    datasets = Datasets(spark, storage, context.run.run_id)
    current = current_features(context, datasets)
    weights_sha256 = current.weights_sha256()
    if current.without_features:
        n = len(current.without_features)
        context.log.warning(
            f"fitting the PCA without {n} class{'' if n == 1 else 'es'}: "
            f"{checks.a_few(current.without_features)}; {NOT_FEATURIZED}"
        )
    moments, fit_on = training_moments(context, datasets, current)
    n_rows = moments.n if moments is not None else 0
    k_max = pca.max_components(n_rows, featurizer.FEATURE_DIM)  # fails on fewer than 2 rows
    explained, components = pca.principal_components(moments.covariance(), k_max)
    target = pca_settings.target_variance
    k, achieved = pca.choose_k(explained, target)
    components = components[:k]  # (k, 1280)
    scree = plots.scree_png(explained, target, k)
    context.log.info(f"PCA: k={k} of at most {k_max} reaches {achieved:.4f} (target {target})")
    row = (
        k, k_max, float(target), float(achieved), explained.tolist(), components.tolist(),
        n_rows, fit_on, weights_sha256, scree,
    )  # fmt: skip
    # The audit reads back what was staged: k, the components' shape, the variance reached.
    staged = datasets.stage_rows(_model_table(row), layout.PCA_MODEL, partitioned=False)
    audit = _model_audit(staged)
    cumulative = explained.cumsum()
    milestones = {
        f"variance_at_k_{m}": float(cumulative[m - 1]) for m in (10, 50, 100, 200) if m <= k_max
    }
    yield from publish_or_fail(
        context,
        datasets,
        staged=[staged],
        publications=[StagedFilesPublication(layout.PCA_MODEL, staged, None, PCA_MODEL_TABLE)],
        checks=[
            checks.result(
                checks.PCA_K_BOUNDS,
                1 <= audit["k"] <= k_max and audit["rows"] == audit["k"] and audit["widths_ok"],
                k=audit["k"],
                k_max=k_max,
                component_rows=audit["rows"],
            ),
            checks.result(
                checks.PCA_VARIANCE_REACHED,
                audit["explained_variance"] >= target - 1e-9,
                achieved=audit["explained_variance"],
                target=target,
            ),
        ],
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
        },
    )
    # Published (a failed check raised above): the run's next steps need not read it back.
    datasets.remember(layout.PCA_MODEL, PcaModel.FACT, PcaModel(k, components, weights_sha256))


# pca_features_parquet's columns; Delta declares every column nullable, as Spark writes any table.
PCA_FEATURES_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType()),
        T.StructField(layout.LABEL_COLUMN, T.StringType()),
        T.StructField("pca_features", T.ArrayType(T.FloatType())),
    ]
)


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
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
    """path, label and the k PCA features as array<float>: a Delta table of a few Parquet files.

    Not split into class folders: every run rewrites the whole table (a new PCA changes every
    row), and one small file per class costs more to write and to read than its bytes.
    """
    spark = pyspark.spark_session
    datasets = Datasets(spark, storage, context.run.run_id)
    current = current_features(context, datasets)
    model = PcaModel.load(datasets)
    k = model.k
    # Each projecting task writes its rows' data file itself, and counts for the audit what it
    # wrote: the checks need no pass over the vectors of their own.
    *keep, output = PCA_FEATURES_SCHEMA.names
    files = datasets.data_files(layout.MOBILENET_FEATURES, current.classes)
    staged = datasets.stage_files(
        lambda folder: pca.projected_files(
            spark,
            current.df if files is None else None,
            model.components,
            "features",
            output,
            keep=keep,
            files=files,
            folder=folder,
        ),
        layout.PCA_FEATURES_PARQUET,
    )
    totals = class_files.per_class(staged.files, (pca.WRONG_LENGTH,))
    per_class = {label: total[class_files.ROWS] for label, total in totals.items()}
    rows = sum(per_class.values())
    bad_length = sum(total[pca.WRONG_LENGTH] for total in totals.values())
    n_features = current.rows
    yield from publish_or_fail(
        context,
        datasets,
        staged=[staged],
        publications=[
            StagedFilesPublication(layout.PCA_FEATURES_PARQUET, staged, None, PCA_FEATURES_SCHEMA)
        ],
        checks=[
            checks.result(
                checks.ROWS_MATCH_FEATURES, rows == n_features, rows=rows, features=n_features
            ),
            checks.result(checks.VECTOR_LENGTH_K, bad_length == 0, k=k, wrong_length=bad_length),
            checks.labels_match(
                current.classes,
                set(per_class),
                why_missing=NOT_FEATURIZED if current.without_features else "",
            ),
        ],
        metadata={
            "num_rows": rows,
            "k": k,
            "num_classes": len(per_class),
            "rows_per_class": counts_table(per_class, "rows"),
        },
    )
    # Published: features_csv, next in this run, need not count the rows again.
    datasets.remember(layout.PCA_FEATURES_PARQUET, SIZE_FACT, (k if rows else 0, rows))
    datasets.remember(layout.PCA_FEATURES_PARQUET, CLASSES_FACT, sorted(per_class))
