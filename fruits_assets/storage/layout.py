"""The storage layout: where every output lives under the output root (the one place for paths)."""

from __future__ import annotations

from fruits_assets.storage.filesystem import join

LABEL_COLUMN = "label"

# Asset names, which are also their folders under the output root.
RAW_IMAGES = "raw_images"
LABELED_IMAGES = "labeled_images"
MOBILENET_FEATURES = "mobilenet_features"
PCA_MODEL = "pca_model"
PCA_FEATURES_PARQUET = "pca_features_parquet"
FEATURES_CSV = "features_csv"
FRUIT_CLASSIFIER = "fruit_classifier"

# Delta tables by their path under the output root.
ACCEPTED_IMAGES = f"{LABELED_IMAGES}/images"
REJECTED_IMAGES = f"{LABELED_IMAGES}/rejected"
LABEL_PARTITIONED = (RAW_IMAGES, ACCEPTED_IMAGES, REJECTED_IMAGES, MOBILENET_FEATURES)
TABLES = (*LABEL_PARTITIONED, PCA_MODEL, PCA_FEATURES_PARQUET)

CSV_FILE_NAME = "features.csv"
PREDICTOR_FILE = "predictor.npz"
# A `label=<class>` folder name longer than this is refused by common file systems.
MAX_FOLDER_NAME_BYTES = 255

# Characters Spark escapes in hive partition folder names (ExternalCatalogUtils.escapePathName).
_ESCAPED = set("\"#%'*/:=?\\\x7f{[]^") | {chr(c) for c in range(0x20)}


def staging_root(output_root: str) -> str:
    """Where runs write data aside before their checks pass (the `_` hides it from readers)."""
    return join(output_root, "_staging")


def staging_dir(output_root: str, run_id: str, name: str) -> str:
    return join(staging_root(output_root), run_id, name)


def asset_dir(output_root: str, asset: str) -> str:
    return join(output_root, asset)


def dataset_dir(output_root: str, dataset: str) -> str:
    """A table's folder: an asset name, or `labeled_images/images` and `labeled_images/rejected`."""
    return join(output_root, dataset)


def accepted_images_dir(output_root: str) -> str:
    return dataset_dir(output_root, ACCEPTED_IMAGES)


def rejected_images_dir(output_root: str) -> str:
    return dataset_dir(output_root, REJECTED_IMAGES)


def featurizer_models_dir(output_root: str) -> str:
    """The TFLite models that computed the stored features (the `_` keeps them out of the data)."""
    return join(output_root, MOBILENET_FEATURES, "_featurizer")


def featurizer_model_path(output_root: str, weights_sha256: str) -> str:
    """The TFLite model named by the features' weights column (`weights_sha256`)."""
    return join(featurizer_models_dir(output_root), f"{weights_sha256}.tflite")


def training_moments_path(output_root: str) -> str:
    """The PCA's training moments, kept with the feature table's commit they describe."""
    return join(output_root, MOBILENET_FEATURES, "_pca", "training_moments.npz")


def feature_groups_path(output_root: str) -> str:
    """Per class and weights, the feature table's rows on each side of the split, kept with
    the commit they describe."""
    return join(output_root, MOBILENET_FEATURES, "_pca", "groups.json")


def csv_path(output_root: str) -> str:
    return join(output_root, FEATURES_CSV, CSV_FILE_NAME)


def classifier_dir(output_root: str) -> str:
    return asset_dir(output_root, FRUIT_CLASSIFIER)


def classifier_file(output_root: str, name: str = PREDICTOR_FILE) -> str:
    """The classifier's serving export (one self-contained file)."""
    return join(classifier_dir(output_root), name)


def partition_dir_name(label: str) -> str:
    """The folder Spark writes for `label=<value>`, escaped exactly as Spark escapes it."""
    escaped = "".join(f"%{ord(c):02X}" if c in _ESCAPED else c for c in label)
    return f"{LABEL_COLUMN}={escaped}"


def partition_dir(dataset_path: str, label: str) -> str:
    return join(dataset_path, partition_dir_name(label))


def class_name_too_long(label: str) -> bool:
    return len(partition_dir_name(label).encode("utf-8")) > MAX_FOLDER_NAME_BYTES
