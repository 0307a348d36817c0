"""Serving the fruit classifier without Spark or TensorFlow: the export `fruits predict` loads."""

import io
import json
from dataclasses import dataclass

import numpy as np

from fruits_assets.storage import filesystem, layout


@dataclass(frozen=True)
class Predictor:
    """MobileNetV2 features -> PCA, colour histogram -> centre and scale -> softmax regression.

    Saved as one file (`predictor.npz`), with the TFLite featurizer that computed the training
    features inside it, so publishing the file publishes one consistent classifier.
    """

    pc: np.ndarray  # (1280, k) principal components, applied as Spark's PCAModel applies them
    pca_mean: np.ndarray  # (k,) training mean of the PCA features
    pca_scale: np.ndarray  # (k,) 1 / sqrt(training variance + shrinkage), see fruit_classifier
    hist_mean: np.ndarray  # (512,) the same for the colour histogram
    hist_scale: np.ndarray
    coefficients: np.ndarray  # (classes, k + 512) Spark's multinomial coefficient matrix
    intercepts: np.ndarray  # (classes,)
    labels: list[str]
    weights_sha256: str
    featurizer_model: bytes  # the TFLite MobileNetV2 penultimate model
    reg_param: float  # the L2 strength the regression was fitted with

    def probabilities(self, features: np.ndarray, histograms: np.ndarray) -> np.ndarray:
        """Class probabilities for MobileNetV2 features (n, 1280) and histograms (n, 512)."""
        pca = ((features.astype(np.float64) @ self.pc) - self.pca_mean) * self.pca_scale
        hist = (histograms.astype(np.float64) - self.hist_mean) * self.hist_scale
        z = np.hstack([pca, hist]) @ self.coefficients.T + self.intercepts
        z -= z.max(axis=1, keepdims=True)
        exp = np.exp(z)
        return exp / exp.sum(axis=1, keepdims=True)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        np.savez(
            buffer,
            **arrays,
            labels=np.array(json.dumps(self.labels)),
            weights_sha256=np.array(self.weights_sha256),
            featurizer_model=np.frombuffer(self.featurizer_model, dtype=np.uint8),
            reg_param=np.array(self.reg_param),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "predictor") -> "Predictor":
        stored = np.load(io.BytesIO(data))
        if "featurizer_model" not in stored.files:
            raise ValueError(
                f"{name} comes from an older fruits_assets: rematerialize fruit_classifier "
                "(fruits run --downstream-only)"
            )
        scalars = ("labels", "weights_sha256", "featurizer_model", "reg_param")
        arrays = {key: stored[key] for key in stored.files if key not in scalars}
        return cls(
            **arrays,
            labels=json.loads(str(stored["labels"])),
            weights_sha256=str(stored["weights_sha256"]),
            featurizer_model=stored["featurizer_model"].tobytes(),
            reg_param=float(stored["reg_param"]),
        )

    @classmethod
    def load(cls, output_root: str) -> "Predictor":
        path = layout.classifier_file(output_root, layout.PREDICTOR_FILE)
        if not filesystem.exists(path):
            raise FileNotFoundError(
                f"No trained classifier under {output_root} ({path} is missing): "
                "run `fruits run` on a dataset first"
            )
        return cls.from_bytes(filesystem.read_bytes(path), path)


@dataclass(frozen=True)
class Answer:
    """One photo's answer: its top classes with probabilities, or why it could not be read."""

    path: str
    top: list[tuple[str, float]] | None = None
    error: str | None = None

    def as_json(self) -> dict:
        if self.error:
            return {"path": self.path, "error": self.error}
        top = [{"label": label, "probability": round(p, 4)} for label, p in self.top or []]
        return {"path": self.path, "top": top}


class FruitPredictor:
    """The trained classifier of an output root and the featurizer that computed its features."""

    def __init__(self, output_root: str) -> None:
        from fruits_assets.ml import featurizer

        self.predictor = Predictor.load(filesystem.normalize_uri(output_root))
        self.featurizer = featurizer.Featurizer(self.predictor.featurizer_model)

    def answer(self, paths: list[str], top: int = 3) -> list[Answer]:
        """Top classes per photo; an unreadable photo gets its error, the others their answer."""
        from fruits_assets.ml import decoding

        answers: list[Answer] = []
        good: list[tuple[int, bytes]] = []
        for index, path in enumerate(paths):
            try:
                decoded = decoding.decode(filesystem.read_bytes(path))
                error = decoded.reason
            except Exception as exc:  # a missing or unreadable file is one answer, not a crash
                decoded, error = None, f"{decoding.REJECT_MISSING}: {exc}"
            answers.append(Answer(path, error=error))
            if not error:
                good.append((index, decoded.content))
        if good:
            contents = [content for _, content in good]
            features, histograms = self.featurizer.with_histograms(contents)
            probabilities = self.predictor.probabilities(features, histograms)
            labels = self.predictor.labels
            for (index, _), row in zip(good, probabilities, strict=True):
                best = row.argsort()[::-1][:top]
                answers[index] = Answer(paths[index], [(labels[c], float(row[c])) for c in best])
        return answers
