"""Tunable settings of the featurizer, PCA and classifier: resources the launch config can set."""

from __future__ import annotations

from typing import Literal

import dagster as dg


class FeaturizerSettings(dg.ConfigurableResource):
    """Which MobileNetV2 weights to use, and how images are batched through the model."""

    weights: str = "imagenet"  # imagenet | random | local .h5 path | s3:// URI of an .h5
    # Demo mode only: fall back to random weights (loudly) when ImageNet weights can't be fetched.
    allow_random_fallback: bool = False
    # Images per call of the TFLite model: 1 to 4 measured alike on XNNPACK (≈180 img/s per
    # thread), 16 slower (≈147); 1 never pads. See BENCHMARKS.md.
    batch_size: int = 1
    threads_per_task: int = 1  # one XNNPACK thread per Spark task slot: no oversubscription
    # float32: Keras's features. int8: a quantized model, whose features differ and which runs
    # in about half the time on CPUs with int8 dot products (README, "The int8 featurizer"). A
    # run of some classes must use the other classes' precision (mobilenet_features refuses).
    precision: Literal["float32", "int8"] = "float32"
    # Check the weights when a run that featurizes starts, before any asset rewrites data.
    check_on_start: bool = True

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.run
        selection = run.asset_selection if run is not None else None
        featurizes = selection is None or dg.AssetKey("mobilenet_features") in selection
        if not self.check_on_start or not featurizes or self.allow_random_fallback:
            return
        from fruits_assets.preflight import PreflightError, check_weights

        try:
            check_weights(self.weights, self.batch_size)
        except PreflightError as exc:
            raise dg.Failure(description=str(exc)) from None


class PcaSettings(dg.ConfigurableResource):
    """The explained variance the PCA must reach; k is chosen from it."""

    target_variance: float = 0.99


class ClassifierSettings(dg.ConfigurableResource):
    """The classifier's search space (chosen by cross-validation on Training) and quality floor."""

    # Multinomial logistic regression on rescaled PCA features + colour histograms; the L2
    # strength is chosen among these by cross-validation on Training (see BENCHMARKS.md).
    reg_params: list[float] = [1e-4, 1e-3]
    # Each input dimension is scaled by 1/sqrt(var + shrinkage * mean var): see fruit_classifier.
    variance_shrinkage: float = 0.1
    # L-BFGS iterations. On the 8,460-image sample Test top-1 is the same after 60, 100 and
    # 200 (98.77 %, see BENCHMARKS.md): each iteration is a Spark job over the training set.
    max_iter: int = 100
    # A refit with the published classifier's classes and L2 strength starts from its
    # coefficients (carried over to the refitted PCA and scalers) and runs this many iterations:
    # after 2 or 40 new photos of a class, 5 give the held-out predictions' accuracy and F1 of
    # 100 from zero, the objective within 1 % of theirs (BENCHMARKS.md). 0: every fit starts
    # from zero.
    warm_start_iter: int = 5
    cv_folds: int = 3
    # auto: cross-validate when the classes or reg_params changed since the published
    # classifier, else refit with the L2 strength it chose; always: every time.
    cross_validate: str = "auto"
    accuracy_floor: float = 0.9  # top-1 on the held-out split; below it the check fails (WARN)
