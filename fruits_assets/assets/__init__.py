"""The software-defined assets of the pipeline, in lineage order."""

from fruits_assets.assets.classifier import fruit_classifier
from fruits_assets.assets.export import features_csv
from fruits_assets.assets.features import mobilenet_features
from fruits_assets.assets.images import labeled_images, raw_images
from fruits_assets.assets.pca import pca_features_parquet, pca_model

PER_CLASS_ASSETS = [raw_images, labeled_images, mobilenet_features]
ALL_CLASSES_ASSETS = [pca_model, pca_features_parquet, features_csv, fruit_classifier]
ALL_ASSETS = PER_CLASS_ASSETS + ALL_CLASSES_ASSETS
