"""The fruit classifier outside Spark: metrics, and the numpy predictor `fruits predict` loads."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from fruits_assets import filesystem, layout

PREDICTOR_FILE = "predictor.npz"


@dataclass(frozen=True)
class Predictor:
    """MobileNetV2 features -> PCA, colour histogram -> centre and scale -> softmax regression."""

    pc: np.ndarray  # (1280, k) principal components, applied as Spark's PCAModel applies them
    pca_mean: np.ndarray  # (k,) training mean of the PCA features
    pca_scale: np.ndarray  # (k,) 1 / sqrt(training variance + shrinkage), see fruit_classifier
    hist_mean: np.ndarray  # (512,) the same for the colour histogram
    hist_scale: np.ndarray
    coefficients: np.ndarray  # (classes, k + 512) Spark's multinomial coefficient matrix
    intercepts: np.ndarray  # (classes,)
    labels: list[str]
    weights_sha256: str

    def probabilities(self, features: np.ndarray, histograms: np.ndarray) -> np.ndarray:
        """Class probabilities for MobileNetV2 features (n, 1280) and histograms (n, 512)."""
        pca = ((features.astype(np.float64) @ self.pc) - self.pca_mean) * self.pca_scale
        hist = (histograms.astype(np.float64) - self.hist_mean) * self.hist_scale
        z = np.hstack([pca, hist]) @ self.coefficients.T + self.intercepts
        z -= z.max(axis=1, keepdims=True)
        exp = np.exp(z)
        return exp / exp.sum(axis=1, keepdims=True)

    def save(self, output_root: str) -> str:
        buffer = io.BytesIO()
        arrays = {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        np.savez(
            buffer,
            **arrays,
            labels=np.array(json.dumps(self.labels)),
            weights_sha256=np.array(self.weights_sha256),
        )
        path = _predictor_path(output_root)
        filesystem.write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, output_root: str) -> Predictor:
        path = _predictor_path(output_root)
        if not filesystem.exists(path):
            raise FileNotFoundError(
                f"No trained classifier under {output_root} ({path} is missing): "
                "run `fruits run` on a dataset first"
            )
        data = np.load(io.BytesIO(filesystem.read_bytes(path)))
        if "coefficients" not in data.files:
            raise ValueError(f"{path} comes from an older fruits_assets: rerun `fruits run`")
        texts = ("labels", "weights_sha256")
        arrays = {name: data[name] for name in data.files if name not in texts}
        return cls(
            **arrays,
            labels=json.loads(str(data["labels"])),
            weights_sha256=str(data["weights_sha256"]),
        )


def _predictor_path(output_root: str) -> str:
    return filesystem.join(layout.asset_dir(output_root, layout.FRUIT_CLASSIFIER), PREDICTOR_FILE)


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


def confusion_png(predicted: np.ndarray, truth: np.ndarray, labels: list[str], classes: list[int]):
    """The confusion sub-matrix of the given (worst) classes and what they were mistaken for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = sorted(set(classes) | set(predicted[np.isin(truth, classes)].tolist()))
    index = {c: i for i, c in enumerate(shown)}
    matrix = np.zeros((len(classes), len(shown)), dtype=int)
    for t, p in zip(truth, predicted, strict=True):
        if t in classes:
            matrix[classes.index(t), index[p]] += 1
    fig, ax = plt.subplots(figsize=(2 + 0.45 * len(shown), 1.5 + 0.4 * len(classes)), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(
        range(len(shown)), [labels[c] for c in shown], rotation=60, ha="right", fontsize=7
    )
    ax.set_yticks(range(len(classes)), [labels[c] for c in classes], fontsize=7)
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (worst classes)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
