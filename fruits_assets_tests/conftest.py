"""Shared fixtures: the ../shared material (overridable), Spark settings, the real-data run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRUITS_SHARED_DIR", REPO.parent / "shared"))
FRUITS360 = SHARED / "data" / "fruits360"
WEIGHTS_H5 = SHARED / "models" / "mobilenet_v2_1.0_224_imagenet_dequant.h5"
WEIGHTS_SHA256 = "472433e2c02cc616671246b8899da36b853b899d8f1ce52dc258fa5f556a5515"

# Small, fixed Spark for tests: CI has 2 cores; quiet TensorFlow.
os.environ.setdefault("FRUITS_SPARK_CORES", "2")
os.environ.setdefault("FRUITS_DRIVER_MEMORY", "2g")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Jars and converted models stay where the setup put them when a test gives `fruits` a new HOME.
os.environ.setdefault("FRUITS_JARS_DIR", str(Path.home() / ".cache" / "fruits_assets" / "jars"))

# The real-data run: 10 classes in the dataset's own layout, 45 Training and 15 Test images each.
REAL_CLASSES = [
    "Apple Golden 2", "Banana 1", "Cherry 1", "Kiwi 1", "Lemon 1",
    "Limes 1", "Orange 1", "Pear 1", "Strawberry 1", "Tomato 1",
]  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def converted_models_cache(tmp_path_factory) -> Path:
    """Converted featurizers go to a cache of this session, not the user's ~/.cache."""
    path = tmp_path_factory.mktemp("fruits-cache")
    os.environ.setdefault("FRUITS_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def fruits360() -> Path:
    if not (FRUITS360 / "Test").is_dir():
        pytest.skip(f"Fruits-360 sample not found at {FRUITS360} (set FRUITS_SHARED_DIR)")
    return FRUITS360


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    if not WEIGHTS_H5.is_file():
        pytest.skip(f"MobileNetV2 weights not found at {WEIGHTS_H5} (set FRUITS_SHARED_DIR)")
    return WEIGHTS_H5


@pytest.fixture(scope="session")
def real_run(tmp_path_factory, fruits360, shared_weights):
    """The whole graph once per session on real photos with the real weights."""
    from dagster import DagsterInstance

    from fruits_assets_tests.helpers import copy_classes, materialize_graph

    root = tmp_path_factory.mktemp("real_images")
    for split in ("Training", "Test"):
        copy_classes(fruits360 / split, root / split, REAL_CLASSES)
    output = tmp_path_factory.mktemp("real_out")
    instance = DagsterInstance.ephemeral()
    outcome = materialize_graph(instance, root, output, shared_weights)
    return root, str(output), instance, outcome
