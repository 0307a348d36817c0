"""The storage layout: where each asset's data lives under the output root."""

from __future__ import annotations

from fruits_assets.filesystem import join

LABEL_COLUMN = "label"

RAW_IMAGES = "raw_images"
LABELED_IMAGES = "labeled_images"
MOBILENET_FEATURES = "mobilenet_features"
PCA_MODEL = "pca_model"
PCA_FEATURES_PARQUET = "pca_features_parquet"
FEATURES_CSV = "features_csv"
FRUIT_CLASSIFIER = "fruit_classifier"

CSV_FILE_NAME = "features.csv"
SCREE_PLOT_NAME = "scree.png"

# Characters Spark escapes in hive partition folder names (ExternalCatalogUtils.escapePathName).
_ESCAPED = set("\"#%'*/:=?\\\x7f{[]^") | {chr(c) for c in range(0x20)}


def asset_dir(output_root: str, asset: str) -> str:
    return join(output_root, asset)


def accepted_images_dir(output_root: str) -> str:
    return join(output_root, LABELED_IMAGES, "images")


def rejected_images_dir(output_root: str) -> str:
    return join(output_root, LABELED_IMAGES, "rejected")


def featurizer_model_path(output_root: str, weights_sha256: str) -> str:
    """The TFLite model that computed the stored features (the `_` keeps it out of the dataset)."""
    return join(output_root, MOBILENET_FEATURES, "_featurizer", f"{weights_sha256}.tflite")


def pca_model_dir(output_root: str) -> str:
    return asset_dir(output_root, PCA_MODEL)


def csv_path(output_root: str) -> str:
    return join(output_root, FEATURES_CSV, CSV_FILE_NAME)


def partition_dir_name(label: str) -> str:
    """The folder Spark writes for `label=<value>`, escaped exactly as Spark escapes it."""
    escaped = "".join(f"%{ord(c):02X}" if c in _ESCAPED else c for c in label)
    return f"{LABEL_COLUMN}={escaped}"


def partition_dir(dataset_dir: str, label: str) -> str:
    return join(dataset_dir, partition_dir_name(label))
