"""Training helpers of the fruit classifier: the shrunk rescaling of its inputs, and its metrics."""

from __future__ import annotations

import numpy as np
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.common import _py2java
from pyspark.ml.feature import ElementwiseProduct, StandardScaler, VectorAssembler
from pyspark.ml.linalg import DenseMatrix, DenseVector, Vectors
from pyspark.sql import DataFrame, SparkSession

from fruits_assets.ml.serving import Predictor


def centre_and_shrink(train: DataFrame, column: str, output: str, shrinkage: float) -> list:
    """A fitted centring and a per-dimension scale 1/sqrt(var + shrinkage * mean(var)).

    Standardized where the training variance is real, one global scale where it is ~0: plain
    standardization divides test images' energy in near-empty PCA components (or rare colour
    bins) by ~0 and wrecks the predictions (8 % top-1 on 10 real classes).
    """
    centre = StandardScaler(
        inputCol=column, outputCol=f"{column}_centred", withMean=True, withStd=False
    ).fit(train)
    variance = centre.std.toArray() ** 2
    scale = 1.0 / np.sqrt(variance + shrinkage * variance.mean() + 1e-12)
    shrink = ElementwiseProduct(
        scalingVec=Vectors.dense(scale), inputCol=f"{column}_centred", outputCol=output
    )
    return [centre, shrink]


def input_stages(train: DataFrame, shrinkage: float) -> list:
    """Fitted stages turning the PCA features `x` and colour histogram `h` into the classifier's
    input `z`: both centred, then rescaled without blowing up near-empty dimensions."""
    return [
        stage
        for column in ("x", "h")
        for stage in centre_and_shrink(train, column, f"{column}s", shrinkage)
    ] + [VectorAssembler(inputCols=["xs", "hs"], outputCol="z")]


def softmax_regression(max_iter: int) -> LogisticRegression:
    """The classifier's multinomial logistic regression on `z` (class index `y`), L2 set later."""
    return LogisticRegression(
        featuresCol="z",
        labelCol="y",
        family="multinomial",
        standardization=False,  # done by `input_stages`, without the blow-up
        elasticNetParam=0.0,
        maxIter=max_iter,
        tol=1e-7,
    )


def input_scaling(stages: list) -> dict[str, np.ndarray]:
    """The centres and scales of fitted `input_stages`, named as `Predictor` names them."""
    pca_centre, pca_shrink, hist_centre, hist_shrink = stages[:4]
    return {
        "pca_mean": pca_centre.mean.toArray(),
        "pca_scale": pca_shrink.getScalingVec().toArray(),
        "hist_mean": hist_centre.mean.toArray(),
        "hist_scale": hist_shrink.getScalingVec().toArray(),
    }


def carried_over(
    previous: Predictor,
    pc: np.ndarray,
    pca_mean: np.ndarray,
    pca_scale: np.ndarray,
    hist_mean: np.ndarray,
    hist_scale: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """A published classifier's coefficients and intercepts re-expressed on new inputs.

    The new inputs are a refitted PCA `pc` (1280, k) and refitted centres and scales (as
    `input_scaling` gives them). Its
    logits stay those of `previous` for features in the span of the new components: the
    components may have turned, flipped sign or changed in number, so the old PCA coordinates
    are taken through `previous.pc.T @ pc` rather than assumed equal.
    """
    k_old = previous.pc.shape[1]
    old_pca, old_hist = previous.coefficients[:, :k_old], previous.coefficients[:, k_old:]
    # logits = W (P.T x - mean) * scale + b, per input block; solve for the new W and b.
    new_pca = (old_pca * previous.pca_scale) @ (previous.pc.T @ pc) / pca_scale
    new_hist = old_hist * previous.hist_scale / hist_scale
    intercepts = (
        previous.intercepts
        - old_pca @ (previous.pca_mean * previous.pca_scale)
        + new_pca @ (pca_mean * pca_scale)
        - old_hist @ (previous.hist_mean * previous.hist_scale)
        + new_hist @ (hist_mean * hist_scale)
    )
    return np.hstack([new_pca, new_hist]), intercepts


def start_from(
    regression: LogisticRegression, coefficients: np.ndarray, intercepts: np.ndarray
) -> LogisticRegression:
    """`regression` with L-BFGS starting from these multinomial coefficients instead of zero.

    Spark ML takes a starting point only on the JVM side (`setInitialModel`, package-private in
    Scala, public in its bytecode), so it is handed over through Py4J, the vectors pickled as
    PySpark ML itself pickles them. Fit the returned estimator without extra params: a copy
    would not carry the starting point.
    """
    sc = SparkSession.active().sparkContext
    rows, cols = coefficients.shape
    matrix = DenseMatrix(rows, cols, np.asarray(coefficients, dtype=np.float64).ravel(order="F"))
    start = sc._jvm.org.apache.spark.ml.classification.LogisticRegressionModel(
        f"{regression.uid}_start",
        _py2java(sc, matrix),
        _py2java(sc, DenseVector(np.asarray(intercepts, dtype=np.float64))),
        rows,
        True,
    )
    regression._java_obj.setInitialModel(start)
    return regression


def top_k_accuracy(probabilities: np.ndarray, truth: np.ndarray, k: int) -> float:
    top = np.argsort(-probabilities, axis=1)[:, :k]
    return float((top == truth[:, None]).any(axis=1).mean())


def per_class_recall(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    support = np.bincount(truth, minlength=n_classes)
    hits = np.bincount(truth[predicted == truth], minlength=n_classes)
    return np.divide(hits, support, out=np.full(n_classes, np.nan), where=support > 0)


def macro_f1(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> float:
    f1 = []
    for c in range(n_classes):
        tp = np.sum((predicted == c) & (truth == c))
        fp, fn = np.sum((predicted == c) & (truth != c)), np.sum((predicted != c) & (truth == c))
        if tp + fn == 0:
            continue
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1)) if f1 else 0.0
