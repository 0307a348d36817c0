"""Training helpers of the fruit classifier: the shrunk rescaling of its inputs, and its metrics."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.common import _py2java
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.feature import ElementwiseProduct, StandardScaler, VectorAssembler, VectorSizeHint
from pyspark.ml.linalg import DenseMatrix, DenseVector, Vectors
from pyspark.ml.tuning import CrossValidator, CrossValidatorModel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits_assets.ml import color
from fruits_assets.ml.serving import Predictor


def input_stages(train: DataFrame, shrinkage: float, pca_dims: int) -> list:
    """Fitted stages turning the PCA features `x` (`pca_dims` values) and colour histogram `h`
    into the classifier's input `z` = [x, h] centred, then each dimension scaled by
    1/sqrt(var + shrinkage * mean(var of its block)): standardized where the training variance
    is real, one global scale where it is ~0. Plain standardization divides test images' energy
    in near-empty PCA components (or rare colour bins) by ~0 and wrecks the predictions (8 %
    top-1 on 10 real classes).

    One Spark job over the training rows fits both blocks; the vectors' sizes are declared so
    that assembling them needs no look at a first row.
    """
    sizes = [
        VectorSizeHint(inputCol="x", size=pca_dims, handleInvalid="error"),
        VectorSizeHint(inputCol="h", size=color.HISTOGRAM_DIM, handleInvalid="error"),
        VectorAssembler(inputCols=["x", "h"], outputCol="xh"),
    ]
    centre = StandardScaler(
        inputCol="xh", outputCol="xh_centred", withMean=True, withStd=False
    ).fit(PipelineModel(stages=sizes).transform(train))
    variance = centre.std.toArray() ** 2
    blocks = (variance[:pca_dims], variance[pca_dims:])
    scale = np.concatenate([1.0 / np.sqrt(v + shrinkage * v.mean() + 1e-12) for v in blocks])
    shrink = ElementwiseProduct(
        scalingVec=Vectors.dense(scale), inputCol="xh_centred", outputCol="z"
    )
    return [*sizes, centre, shrink]


def class_order(labels: Iterable[str]) -> list[str]:
    """The classes in the order of StringIndexer's `alphabetAsc` (Java's string order: by UTF-16
    code units, which differs from Python's for characters beyond the BMP)."""
    return sorted(labels, key=lambda label: label.encode("utf-16-be"))


# The column of each training photo's cross-validation fold (`fold_of`).
FOLD = "fold"


def fold_of(path: Column, folds: int) -> Column:
    """The cross-validation fold of each photo, from a hash of its class folder and file name:
    the same photos fall in the same folds whatever the order or the partitions their rows come
    in (Spark's default, a random number per row, follows the plan that delivered the rows), and
    wherever the input root lies (a local copy, S3)."""
    parts = F.split(path, "/")
    photo = F.concat_ws("/", F.element_at(parts, -2), F.element_at(parts, -1))
    return F.pmod(F.xxhash64(photo), F.lit(folds)).cast("int")


def cross_validator(regression: LogisticRegression, grid: list, folds: int) -> CrossValidator:
    """Cross-validation of `regression` over the param maps `grid` by top-1 accuracy, on the
    folds of the rows' `FOLD` column (`fold_of`)."""
    return CrossValidator(
        estimator=regression,
        estimatorParamMaps=grid,
        evaluator=MulticlassClassificationEvaluator(labelCol="y", metricName="accuracy"),
        numFolds=folds,
        foldCol=FOLD,
    )


class EmptyFoldError(ValueError):
    """Too few training photos for the cross-validation's folds: one fold holds none."""


def cross_validated(
    regression: LogisticRegression, grid: list, folds: int, data: DataFrame
) -> CrossValidatorModel:
    """`cross_validator(regression, grid, folds)` fitted on `data`. Raises `EmptyFoldError`,
    naming the remedies, when a fold holds no photo (each photo's fold is fixed by its name, so
    a few photos can leave one empty): Spark would stop with a bare "at fold N is empty"."""
    try:
        return cross_validator(regression, grid, folds).fit(data)
    except ValueError as exc:
        if "at fold" not in str(exc):
            raise
        raise EmptyFoldError(
            f"Cross-validation needs training photos in each of its {folds} folds: {exc} Add "
            "photos, lower `cv_folds`, or give one L2 strength in `reg_params` (no "
            "cross-validation)."
        ) from exc


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


def input_scaling(stages: list, pca_dims: int) -> dict[str, np.ndarray]:
    """The centres and scales of fitted `input_stages`, named as `Predictor` names them."""
    centre, shrink = stages[-2:]
    mean, scale = centre.mean.toArray(), shrink.getScalingVec().toArray()
    return {
        "pca_mean": mean[:pca_dims],
        "pca_scale": scale[:pca_dims],
        "hist_mean": mean[pca_dims:],
        "hist_scale": scale[pca_dims:],
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
