"""The fruit classifier on real features: honest split, metadata, and `fruits predict`."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCAModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import SparkSession

from fruits_assets import runner
from fruits_assets.assets.current_features import WEIGHTS_COLUMN, features_weights
from fruits_assets.ml.serving import Predictor
from fruits_assets.storage import layout
from fruits_assets_tests.conftest import REAL_CLASSES as CLASSES
from fruits_assets_tests.conftest import WEIGHTS_SHA256
from fruits_assets_tests.helpers import FAST_CLASSIFIER, fruits, settings

pytestmark = pytest.mark.slow


def test_classifier_trained_on_training_scored_on_test(real_run):
    _, _, _, outcome = real_run
    meta = outcome.metadata["fruit_classifier"]
    assert meta["train_images"] == 450 and meta["test_images"] == 150
    assert "Training/Test folders" in meta["split"]
    assert meta["top1_accuracy"] >= 0.9 and meta["top5_accuracy"] >= meta["top1_accuracy"]
    assert 0 < meta["macro_f1"] <= 1
    assert outcome.checks[("fruit_classifier", "top1_accuracy_above_floor")]


def test_numpy_predictor_matches_spark_models(real_run):
    """The serving export gives Spark's own probabilities, from the stored Spark ML models."""
    _, output, _, _ = real_run
    spark = SparkSession.builder.getOrCreate()
    features = spark.read.parquet(layout.asset_dir(output, layout.MOBILENET_FEATURES)).limit(20)
    pca = PCAModel.load(layout.pca_model_dir(output))
    model = PipelineModel.load(layout.classifier_model_dir(output))
    predictor = Predictor.load(output)
    projected = pca.transform(features.withColumn("features_vector", array_to_vector("features")))
    inputs = projected.withColumnRenamed("pca_vector", "x").withColumn(
        "h", array_to_vector("color_histogram")
    )
    rows = (
        model.transform(inputs)
        .select("features", "color_histogram", vector_to_array("probability").alias("p"))
        .collect()
    )
    ours = predictor.probabilities(
        np.array([r["features"] for r in rows]), np.array([r["color_histogram"] for r in rows])
    )
    np.testing.assert_allclose(ours, np.array([r["p"] for r in rows]), atol=1e-4)


def test_classifier_exports_the_featurizer_that_computed_the_features(real_run, tmp_path):
    """A downstream rerun needs no weights: it ships the model stored with the features."""
    images, output, instance, _ = real_run
    outcome = runner.materialize(
        settings(images, output, tmp_path / "no_such_weights.h5"),
        instance,
        downstream_only=True,
        resource_overrides=FAST_CLASSIFIER,
    )
    assert outcome.ok, outcome.failures
    stored = Path(layout.featurizer_model_path(output, WEIGHTS_SHA256)).read_bytes()
    served = Path(layout.classifier_file(output, layout.SERVING_MODEL_FILE))
    assert served.read_bytes() == stored
    assert Predictor.load(output).weights_sha256 == WEIGHTS_SHA256


def test_mixed_or_unrecorded_weights_are_refused():
    """Features from two sets of weights would make a meaningless PCA: a clear failure instead."""
    spark = SparkSession.builder.getOrCreate()
    columns = ["path", "label", WEIGHTS_COLUMN]
    one = spark.createDataFrame([("a", "Kiwi", "s1"), ("b", "Lemon", "s1")], columns)
    assert features_weights(one) == "s1"
    mixed = spark.createDataFrame([("a", "Kiwi", "s1"), ("b", "Lemon", "s2")], columns)
    with pytest.raises(dg.Failure, match="mixes 2 sets of weights.*Lemon"):
        features_weights(mixed)
    with pytest.raises(dg.Failure, match="does not record its weights"):
        features_weights(one.drop(WEIGHTS_COLUMN))


def test_predict_cli_answers_each_photo_and_flags_bad_files(real_run, fruits360, tmp_path):
    _, output, _, _ = real_run
    photos = [sorted((fruits360 / "Test" / name).glob("*.jpg"))[-1] for name in CLASSES[:3]]
    bad = tmp_path / "not_a_photo.jpg"
    bad.write_text("hello")
    done = fruits("predict", *map(str, photos), str(bad), "--model", output, "--json",
                  home=tmp_path / "home", timeout=300)  # fmt: skip
    assert done.returncode == 1  # one file was bad, the others still answered
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [a["path"] for a in answers] == [*map(str, photos), str(bad)]
    for answer, name in zip(answers[:3], CLASSES[:3], strict=True):
        assert len(answer["top"]) == 3
        assert answer["top"][0]["label"] == name
        assert sum(t["probability"] for t in answer["top"]) <= 1.0001
    assert "not an image" in answers[3]["error"]
    text = fruits("predict", str(photos[0]), "--model", output, home=tmp_path / "home")
    assert text.returncode == 0 and CLASSES[0] in text.stdout
