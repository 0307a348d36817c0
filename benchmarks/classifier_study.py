"""Which classifier head on frozen MobileNetV2 features? Chosen on Training only, Test once.

Reads the `mobilenet_features` of a `fruits run` over a root with Training/ and Test/ folders,
and compares, by cross-validation on Training with folds grouped by video frame range (Fruits-360
images are frames of one video per fruit: random folds leak near-duplicates), softmax regression
heads with L2 regularization on, at 0.90 / 0.95 / 0.99 explained variance (PCA fit on Training):
  - "global": the PCA features centred and scaled by one global factor,
  - "standardized": each PCA feature standardized,
  - "standardized+color": the same, plus the image's colour histogram (fruits_assets.color),
  - "shrunk+color": each dimension scaled by 1/sqrt(var + 0.1 mean var), as fruit_classifier,
  - with --augment, "standardized" with Training augmented by mirrored copies (featurized here).
Each configuration's chosen L2 strength is then scored once on Test.

    .venv/bin/python benchmarks/classifier_study.py OUTPUT_ROOT [--augment --weights H5]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

L2_GRID = [1e-4, 1e-3]
FOLDS = 3
FRAME = re.compile(r"(?:r_)?(\d+)_100\.jpg$")


def load(output: str) -> dict:
    from deltalake import DeltaTable

    frame = DeltaTable(f"{output}/mobilenet_features").to_pandas()
    frame["label"] = frame["label"].astype(str)
    frame["split"] = frame["path"].str.split("/").str[-3].str.lower()
    x = np.stack(frame["features"].to_numpy()).astype(np.float32)
    labels = sorted(frame["label"].unique())
    y = frame["label"].map({name: i for i, name in enumerate(labels)}).to_numpy()
    frames = frame["path"].str.extract(FRAME.pattern)[0].fillna("0").astype(int).to_numpy()
    return {"x": x, "y": y, "split": frame["split"].to_numpy(), "frames": frames,
            "paths": frame["path"].to_numpy(), "labels": labels}  # fmt: skip


def pca_basis(x: np.ndarray, variance: float) -> tuple[np.ndarray, np.ndarray, int]:
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    explained = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(explained, variance) + 1)
    return mean, vt[:k].T, k


def softmax_regression(x: np.ndarray, y: np.ndarray, classes: int, l2: float, steps: int = 300):
    """Full-batch Adam on the L2-regularized cross-entropy (convex: the optimum is unique)."""
    rng = np.random.default_rng(0)
    x = x.astype(np.float32)  # float32 halves the time; the optimum does not move
    w = rng.normal(scale=0.01, size=(x.shape[1], classes)).astype(np.float32)
    b = np.zeros(classes, dtype=np.float32)
    onehot = np.eye(classes, dtype=np.float32)[y]
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    lr, beta1, beta2 = 0.05, 0.9, 0.999
    for t in range(1, steps + 1):
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        grad_logits = (p - onehot) / len(x)
        grads = [x.T @ grad_logits + l2 * w, grad_logits.sum(axis=0)]
        for i, (param, grad) in enumerate(zip((w, b), grads, strict=True)):
            m[i] = beta1 * m[i] + (1 - beta1) * grad
            v[i] = beta2 * v[i] + (1 - beta2) * grad**2
            param -= lr * (m[i] / (1 - beta1**t)) / (np.sqrt(v[i] / (1 - beta2**t)) + 1e-8)
    return w, b


def accuracy(w, b, x, y) -> float:
    return float(((x @ w + b).argmax(axis=1) == y).mean())


def project(x, mean, basis, scale):
    return (x - mean) @ basis / scale


def inputs(x_fit, h_fit, x_eval, h_eval, variance: float, mode: str):
    """The head's inputs for fit and eval rows; every statistic comes from the fit rows."""
    mean, basis, k = pca_basis(x_fit, variance)
    z_fit, z_eval = (x_fit - mean) @ basis, (x_eval - mean) @ basis
    if mode == "global":
        scale = np.sqrt((z_fit**2).sum(axis=1).mean())
        return z_fit / scale, z_eval / scale, k
    if mode == "shrunk+color":  # what fruit_classifier ships: no blow-up of near-empty dimensions
        z_scale = 1 / np.sqrt(z_fit.var(axis=0) + 0.1 * z_fit.var(axis=0).mean())
        h_mean, h_var = h_fit.mean(axis=0), h_fit.var(axis=0)
        h_scale = 1 / np.sqrt(h_var + 0.1 * h_var.mean() + 1e-12)
        return (
            np.hstack([z_fit * z_scale, (h_fit - h_mean) * h_scale]),
            np.hstack([z_eval * z_scale, (h_eval - h_mean) * h_scale]),
            k,
        )
    std = z_fit.std(axis=0)
    z_fit, z_eval = z_fit / std, z_eval / std
    if mode == "standardized+color":
        h_mean, h_std = h_fit.mean(axis=0), h_fit.std(axis=0)
        h_std[h_std == 0] = np.inf  # constant bins carry nothing (Spark's scaler zeroes them)
        z_fit = np.hstack([z_fit, (h_fit - h_mean) / h_std])
        z_eval = np.hstack([z_eval, (h_eval - h_mean) / h_std])
    return z_fit, z_eval, k


def evaluate(data: dict, variance: float, mode: str, extra: dict | None) -> dict:
    train, test = data["split"] == "training", data["split"] == "test"
    x_train, y_train, h_train = data["x"][train], data["y"][train], data["h"][train]
    groups = data["frames"][train] // 60 % FOLDS  # contiguous frame ranges stay in one fold
    classes = len(data["labels"])

    def fit_rows(mask):
        x, y, h = x_train[mask], y_train[mask], h_train[mask]
        if extra is not None:  # mirrored copies of the same fit images only
            x, y = np.vstack([x, extra["x"][mask]]), np.concatenate([y, y_train[mask]])
            h = np.vstack([h, h])
        return x, y, h

    scores = {}
    for l2 in L2_GRID:
        fold_scores = []
        for fold in range(FOLDS):
            x, y, h = fit_rows(groups != fold)
            held = groups == fold
            z_fit, z_eval, _ = inputs(x, h, x_train[held], h_train[held], variance, mode)
            w, b = softmax_regression(z_fit, y, classes, l2)
            fold_scores.append(accuracy(w, b, z_eval, y_train[held]))
        scores[l2] = float(np.mean(fold_scores))
    best = max(scores, key=scores.get)
    x, y, h = fit_rows(np.ones(len(y_train), dtype=bool))
    z_fit, z_eval, k = inputs(x, h, data["x"][test], data["h"][test], variance, mode)
    w, b = softmax_regression(z_fit, y, classes, best)
    return {"variance": variance, "k": k, "head": mode + ("+mirrored" if extra else ""),
            "cv_top1": scores, "chosen_l2": best,
            "test_top1": round(accuracy(w, b, z_eval, data["y"][test]), 4)}  # fmt: skip


def mirrored_features(data: dict, weights: str) -> dict:
    """MobileNetV2 features of left-right mirrored Training images."""
    import io

    from PIL import Image, ImageOps

    from fruits_assets.ml import featurizer

    model = featurizer.Featurizer(
        featurizer.tflite_model(featurizer.resolve_weights(weights), 1)[0], threads=2
    )
    train = data["split"] == "training"
    contents = []
    for path in data["paths"][train]:
        with Image.open(path) as image:
            buffer = io.BytesIO()
            ImageOps.mirror(image.convert("RGB")).save(buffer, format="PNG")
            contents.append(buffer.getvalue())
    started = time.perf_counter()
    x = model(contents)
    print(f"featurized {len(contents)} mirrored images in {time.perf_counter() - started:.0f} s")
    return {"x": x, "y": data["y"][train], "frames": data["frames"][train]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--weights", help="the .h5 the run used (needed by --augment)")
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--variances", type=float, nargs="+", default=[0.90, 0.95, 0.99])
    args = parser.parse_args()
    data = load(args.output)
    from fruits_assets.ml import color

    data["h"] = np.stack([color.histogram(Path(p).read_bytes()) for p in data["paths"]])
    extra = mirrored_features(data, args.weights) if args.augment else None
    modes = ("global", "standardized", "standardized+color", "shrunk+color")
    runs = [(mode, None) for mode in modes]
    if extra is not None:
        runs.append(("standardized", extra))
    results = []
    for variance in args.variances:
        for mode, augment in runs:
            started = time.perf_counter()
            result = evaluate(data, variance, mode, augment)
            result["seconds"] = round(time.perf_counter() - started, 1)
            print(json.dumps(result), flush=True)
            results.append(result)
    Path(args.output, "classifier_study.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
