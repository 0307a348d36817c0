"""Tunable settings of the featurizer, PCA and classifier, as resources the CLI and UI set."""

from __future__ import annotations

import dagster as dg


class FeaturizerSettings(dg.ConfigurableResource):
    """Which MobileNetV2 weights to use, and how images are batched through the model."""

    weights: str = "imagenet"  # imagenet | random | local .h5 path | s3:// URI of an .h5
    # Demo mode only: fall back to random weights (loudly) when ImageNet weights can't be fetched.
    allow_random_fallback: bool = False
    # 16 images per model call measured fastest on a 2-core AMD EPYC (30 img/s per thread vs 21
    # at 64: smaller activations stay in cache); see BENCHMARKS.md.
    batch_size: int = 16
    arrow_batch_rows: int = 256
    tf_threads_per_task: int = 1  # one TF thread per Spark task slot: no oversubscription


class PcaSettings(dg.ConfigurableResource):
    """The explained variance the PCA must reach; k is chosen from it."""

    target_variance: float = 0.99


class ClassifierSettings(dg.ConfigurableResource):
    """The classifier's search space (chosen by cross-validation on Training) and quality floor."""

    # Multinomial logistic regression on standardized PCA features + colour histograms; the L2
    # strength is chosen among these by cross-validation on Training (see BENCHMARKS.md).
    reg_params: list[float] = [1e-4, 1e-3]
    # Each input dimension is scaled by 1/sqrt(var + shrinkage * mean var): see fruit_classifier.
    variance_shrinkage: float = 0.1
    max_iter: int = 200
    cv_folds: int = 3
    accuracy_floor: float = 0.9  # top-1 on the held-out split; below it the check fails (WARN)
