"""Test helpers: the `fruits` command as a subprocess, small input roots, graph runs, readers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from fruits_assets import runner
from fruits_assets.resources.ml_settings import ClassifierSettings
from fruits_assets.settings import FruitsSettings
from fruits_assets.storage import layout

FRUITS = str(Path(sys.executable).with_name("fruits"))


def fruits(
    *args: str, home: Path, timeout: int = 900, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the `fruits` command as a user does: a fresh process, its own instance and HOME."""
    full_env = {**os.environ, "DAGSTER_HOME": str(home), "HOME": str(home.parent), **(env or {})}
    return subprocess.run(
        [FRUITS, *args], env=full_env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def copy_classes(source: Path, target: Path, classes: list[str]) -> Path:
    """A small input root with the given class folders of a Fruits-360 split."""
    for name in classes:
        shutil.copytree(source / name, target / name)
    return target


def settings(images, output, weights, variance: float = 0.99) -> FruitsSettings:
    return FruitsSettings.from_env(
        images=str(images), output=str(output), weights=str(weights), variance=variance
    )


# A small search space keeps the classifier's cross-validation quick in tests.
FAST_CLASSIFIER = {
    "classifier_settings": ClassifierSettings(reg_params=[1e-4], max_iter=100, cv_folds=2)
}


def materialize_graph(
    instance: dg.DagsterInstance,
    images,
    output,
    weights,
    classes: Iterable[str] | None = None,
    variance: float = 0.99,
) -> runner.RunOutcome:
    """What `fruits run` does, in this process: sync partitions, run the classes, downstream."""
    return runner.materialize(
        settings(images, output, weights, variance),
        instance,
        classes=classes,
        resource_overrides=FAST_CLASSIFIER,
    )


def read_dataset(path, version: int | None = None) -> pd.DataFrame:
    """A published table as pandas, read outside Spark as users do (the `deltalake` package)."""
    from deltalake import DeltaTable

    table = DeltaTable(str(path), version=version).to_pandas()
    return table.assign(label=table.label.astype(str)) if "label" in table else table


def keras_features(weights_path, photos: list[bytes]) -> np.ndarray:
    """The reference: Keras's MobileNetV2 (include_top=True) cut at layers[-2], via predict."""
    import keras

    from fruits_assets.ml import featurizer

    full = keras.applications.MobileNetV2(include_top=True, weights=None)
    full.load_weights(str(weights_path))
    model = keras.Model(full.input, full.layers[-2].output)
    batch = np.stack([featurizer.preprocess(photo) for photo in photos])
    return model.predict(batch, verbose=0)


def local_spark():
    """This process's Spark session, configured as `fruits` configures local Spark (Delta and
    the local file system included), whichever test creates it first."""
    from pyspark.sql import SparkSession

    from fruits_assets.resources.spark import local_spark_config

    builder = SparkSession.builder
    for key, value in local_spark_config(FruitsSettings()).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def assert_kept_groups_match_the_table(output) -> None:
    """The groups of feature rows kept with the table's latest commit (per class and
    featurizer: rows, Training, Test, neither), which the featurizing step derives from its
    own audit, are those one aggregate over the table finds."""
    from fruits_assets.assets.current_features import _groups
    from fruits_assets.resources.storage import FruitsStorage
    from fruits_assets.storage.datasets import Datasets

    datasets = Datasets(
        local_spark(), FruitsStorage(images_root=str(output), output_root=str(output))
    )
    kept = json.loads(Path(layout.feature_groups_path(str(output))).read_text())
    assert tuple(kept["commit"]) == datasets.commit(layout.MOBILENET_FEATURES)
    counted = _groups(datasets.read(layout.MOBILENET_FEATURES))
    assert sorted(kept["groups"], key=str) == sorted(counted, key=str)


def publish_rows(datasets, df, table: str, labels=None) -> int:
    """Publish a Spark DataFrame's rows into a table as the pipeline's steps publish theirs:
    written aside as data files, then one commit (these classes' rows replaced, in class
    folders; no `labels`: the whole of a table without class folders). Returns its version."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    rows = pa.Table.from_pandas(
        df.toPandas(), schema=to_arrow_schema(df.schema), preserve_index=False
    )
    staged = datasets.stage_rows(rows, table, partitioned=labels is not None)
    version = datasets.publish_files(staged, table, labels, df.schema)
    datasets.discard(staged)
    return version
