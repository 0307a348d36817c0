"""The fruit classifier on real features: honest split, metadata, and `fruits predict`."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from fruits_assets import runner
from fruits_assets.assets.current_features import WEIGHTS_COLUMN, features_weights
from fruits_assets.ml.serving import Predictor
from fruits_assets.storage import layout
from fruits_assets_tests.conftest import REAL_CLASSES as CLASSES
from fruits_assets_tests.conftest import WEIGHTS_SHA256
from fruits_assets_tests.helpers import FAST_CLASSIFIER, fruits, local_spark, read_dataset, settings

pytestmark = pytest.mark.slow


def test_classifier_trained_on_training_scored_on_test(real_run):
    _, _, _, outcome = real_run
    meta = outcome.metadata["fruit_classifier"]
    assert meta["train_images"] == 450 and meta["test_images"] == 150
    assert "Training/Test folders" in meta["split"]
    assert meta["top1_accuracy"] >= 0.9 and meta["top5_accuracy"] >= meta["top1_accuracy"]
    assert 0 < meta["macro_f1"] <= 1
    assert outcome.checks[("fruit_classifier", "top1_accuracy_above_floor")]


def test_serving_export_gives_spark_probabilities(real_run):
    """The published export reproduces Spark's probabilities (the asset audits it before it
    publishes) and classifies stored features of every class."""
    _, output, _, outcome = real_run
    assert outcome.checks[("fruit_classifier", "serving_export_matches_spark")]
    predictor = Predictor.load(output)
    features = read_dataset(layout.asset_dir(output, layout.MOBILENET_FEATURES))
    test = features[features.path.str.contains("/Test/")].groupby("label").head(3)
    probabilities = predictor.probabilities(
        np.stack(test.features.to_numpy()), np.stack(test.color_histogram.to_numpy())
    )
    predicted = [predictor.labels[i] for i in probabilities.argmax(axis=1)]
    assert np.mean(np.array(predicted) == test.label.to_numpy()) > 0.9


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
    predictor = Predictor.load(output)
    assert predictor.featurizer_model == stored and predictor.weights_sha256 == WEIGHTS_SHA256


def test_mixed_or_unrecorded_weights_are_refused():
    """Features from two sets of weights would make a meaningless PCA: a clear failure instead."""
    spark = local_spark()
    columns = ["path", "label", WEIGHTS_COLUMN]
    one = spark.createDataFrame([("a", "Kiwi", "s1"), ("b", "Lemon", "s1")], columns)
    assert features_weights(one) == "s1"
    mixed = spark.createDataFrame([("a", "Kiwi", "s1"), ("b", "Lemon", "s2")], columns)
    with pytest.raises(dg.Failure, match="mixes 2 featurizers.*Lemon"):
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
