"""features_csv: the PCA features as one CSV file for the business team, as the seed produced."""

import csv
import io
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.csv as pa_csv
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits_assets.assets import checks
from fruits_assets.assets.pca import SIZE_FACT, pca_features_parquet
from fruits_assets.assets.publishing import FilePublication, publish_or_fail
from fruits_assets.partitions import registered_classes
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import csv_text, errors, filesystem, layout, table_files
from fruits_assets.storage.datasets import Datasets

TEXT = pa.string()  # a label such as "2024" stays text
LINES = "lines"  # the staging subfolder of the tasks' pieces, gone once the file is made


def read_csv_facts(uri: str) -> tuple[list[str], int, set[str]]:
    """Header, row count and label set of a CSV, parsed as RFC 4180 (quoted newlines allowed),
    streamed in blocks: what any reader of the published file will see. Every row is split
    into its fields (a row with too few or too many fails), but only the labels are converted:
    the k feature columns would cost most of the time and tell the checks nothing."""
    loc = filesystem.Location.of(uri)
    with loc.fs.open_input_stream(loc.path) as stream:
        header = next(csv.reader(io.TextIOWrapper(stream, encoding="utf-8", newline="")), [])
    if not header:
        return [], 0, set()
    counted = "label" if "label" in header else header[0]
    rows, labels = 0, set()
    with loc.fs.open_input_stream(loc.path) as stream:
        reader = pa_csv.open_csv(
            stream,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                include_columns=[counted], column_types={counted: TEXT}
            ),
        )
        for batch in reader:
            rows += batch.num_rows
            if counted == "label":
                labels.update(batch.column(0).to_pylist())
    return header, rows, labels


def _pieces(datasets: Datasets, k: int, folder: str) -> DataFrame:
    """The Spark job that writes the feature rows' CSV lines under `folder`, on every core
    (`csv_text.written`): the Python workers read the table's files themselves where they hold
    exactly its rows."""
    files = datasets.data_files(layout.PCA_FEATURES_PARQUET)
    if files is None:
        features = datasets.read(layout.PCA_FEATURES_PARQUET)
        rows = features.select("path", "label", "pca_features")
        return rows.mapInArrow(csv_text.written("pca_features", k, folder), csv_text.PIECES_SCHEMA)
    return table_files.file_rows(datasets.spark, files).mapInArrow(
        csv_text.written("pca_features", k, folder, from_files=True), csv_text.PIECES_SCHEMA
    )


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
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
):
    """One CSV file: path, label, pca_feature_1 … pca_feature_k, sorted by label and path.

    RFC 4180: fields with a comma, a quote or a line break are quoted and quotes doubled, so
    Python's csv, pandas and Spark (multiLine) all read one row per feature row.
    """
    spark = pyspark.spark_session
    datasets = Datasets(spark, storage, context.run.run_id)
    size = datasets.recall(layout.PCA_FEATURES_PARQUET, SIZE_FACT)
    if size is None:
        features = datasets.read(layout.PCA_FEATURES_PARQUET)
        facts = features.agg(F.max(F.size("pca_features")).alias("k"), F.count("*").alias("n"))
        row = facts.first()
        size = (row["k"] or 0, row["n"])
    k, expected_rows = size
    # Each row's line is formatted and written aside on every core; the driver sorts their
    # keys and puts the lines together after the header, in one file.
    expected_header = ["path", "label", *(f"pca_feature_{i + 1}" for i in range(k))]
    staged = datasets.stage_files(
        lambda folder: _pieces(datasets, k, filesystem.join(folder, LINES)),
        layout.FEATURES_CSV,
    )
    part = filesystem.join(staged.location, layout.CSV_FILE_NAME)
    pieces = [
        csv_text.Piece(row[csv_text.TEXT], row[csv_text.KEYS], row[csv_text.ROWS])
        for row in staged.files
    ]
    with errors.explained(staged.location):
        csv_text.merged(pieces, ",".join(expected_header), part)
    filesystem.delete_dir(filesystem.join(staged.location, LINES))
    header, rows, labels = read_csv_facts(part)
    target = layout.csv_path(storage.output)
    yield from publish_or_fail(
        context,
        datasets,
        staged=[staged],
        publications=[FilePublication(part, target)],
        checks=[
            checks.result(
                checks.ROWS_MATCH_FEATURES, rows == expected_rows, rows=rows, expected=expected_rows
            ),
            checks.result(
                checks.CSV_COLUMNS_K, header == expected_header, columns=len(header), k=k
            ),
            checks.labels_match(registered_classes(context.instance), labels),
        ],
        metadata={"num_rows": rows, "num_columns": len(header), "k": k},
    )
