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
    """MobileNetV2 features -> PCA -> centre and scale -> Spark's MLP (softmax on top)."""

    pc: np.ndarray  # (1280, k) principal components, applied as Spark's PCAModel applies them
    mean: np.ndarray  # (k,) training mean of the PCA features
    scale: float  # one global factor, so no near-constant component is blown up
    layers: list[int]  # [k, (hidden,) classes]
    weights: np.ndarray  # Spark's flat MLP weights: per layer, W (out x in, column-major), then b
    labels: list[str]
    weights_sha256: str

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        activation = ((features.astype(np.float64) @ self.pc) - self.mean) * self.scale
        offset = 0
        for index, (n_in, n_out) in enumerate(zip(self.layers[:-1], self.layers[1:], strict=True)):
            w = self.weights[offset : offset + n_in * n_out].reshape((n_out, n_in), order="F")
            b = self.weights[offset + n_in * n_out : offset + n_in * n_out + n_out]
            offset += n_in * n_out + n_out
            z = activation @ w.T + b
            if index < len(self.layers) - 2:
                activation = 1.0 / (1.0 + np.exp(-z))  # Spark's hidden layers are sigmoid
            else:
                z -= z.max(axis=1, keepdims=True)
                exp = np.exp(z)
                activation = exp / exp.sum(axis=1, keepdims=True)
        return activation

    def save(self, output_root: str) -> str:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            pc=self.pc, mean=self.mean, scale=np.array(self.scale), layers=np.array(self.layers),
            weights=self.weights, labels=np.array(json.dumps(self.labels)),
            weights_sha256=np.array(self.weights_sha256),
        )  # fmt: skip
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
        return cls(
            pc=data["pc"], mean=data["mean"], scale=float(data["scale"]),
            layers=[int(n) for n in data["layers"]], weights=data["weights"],
            labels=json.loads(str(data["labels"])), weights_sha256=str(data["weights_sha256"]),
        )  # fmt: skip


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
