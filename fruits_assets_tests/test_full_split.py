"""The done-means run: `fruits run` on the whole Fruits-360 Test split with the shared weights."""

from __future__ import annotations

import pandas as pd
import pytest

from fruits_assets_tests.helpers import fruits, read_dataset

pytestmark = pytest.mark.slow


def test_full_test_split(tmp_path, fruits360, shared_weights):
    output = tmp_path / "out"
    done = fruits(
        "run", "--images", str(fruits360 / "Test"), "--output", str(output),
        "--weights", str(shared_weights), home=tmp_path / "home", timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "images read:        2115" in done.stdout
    assert "classes:            141" in done.stdout
    parquet = read_dataset(output / "pca_features_parquet")
    csv = pd.read_csv(output / "features_csv" / "features.csv")
    assert len(parquet) == len(csv) == 2115
    k = len(parquet.pca_features[0])
    assert csv.shape[1] == k + 2 and k <= 1280
    assert csv.label.nunique() == 141
