"""Which classifier head on frozen MobileNetV2 features? Chosen on Training only, Test once.

Reads the `mobilenet_features` of a `fruits run` over a root with Training/ and Test/ folders,
and compares, by cross-validation on Training with folds grouped by video frame range (Fruits-360
images are frames of one video per fruit: random folds leak near-duplicates), softmax regression
heads with L2 regularization on:
  - the PCA projection at 0.90 / 0.95 / 0.99 explained variance (fit on Training),
  - the same with Training augmented by mirrored copies (featurized here, in-process).
Each configuration's chosen L2 strength is then scored once on Test.

    .venv/bin/python benchmarks/classifier_study.py OUTPUT_ROOT [--weights H5] [--augment]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

L2_GRID = [1e-4, 1e-3, 1e-2, 3e-2]
FOLDS = 3
FRAME = re.compile(r"(?:r_)?(\d+)_100\.jpg$")


def load(output: str) -> dict:
    table = ds.dataset(f"{output}/mobilenet_features", partitioning="hive").to_table()
    frame = table.to_pandas()
    frame["label"] = frame["label"].astype(str)
    frame["split"] = frame["path"].str.split("/").str[-3].str.lower()
    x = np.stack(frame["features"].to_numpy()).astype(np.float64)
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


def softmax_regression(x: np.ndarray, y: np.ndarray, classes: int, l2: float, steps: int = 400):
    """Full-batch Adam on the L2-regularized cross-entropy (convex: the optimum is unique)."""
    rng = np.random.default_rng(0)
    w = rng.normal(scale=0.01, size=(x.shape[1], classes))
    b = np.zeros(classes)
    onehot = np.eye(classes)[y]
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


def evaluate(data: dict, variance: float, extra: dict | None) -> dict:
    train, test = data["split"] == "training", data["split"] == "test"
    x_train, y_train = data["x"][train], data["y"][train]
    groups = data["frames"][train] // 60 % FOLDS  # contiguous frame ranges stay in one fold
    if extra is not None:
        x_aug, y_aug, g_aug = extra["x"], extra["y"], extra["frames"] // 60 % FOLDS
    classes = len(data["labels"])
    scores = {}
    for l2 in L2_GRID:
        fold_scores = []
        for fold in range(FOLDS):
            fit_x, fit_y = x_train[groups != fold], y_train[groups != fold]
            if extra is not None:
                fit_x = np.vstack([fit_x, x_aug[g_aug != fold]])
                fit_y = np.concatenate([fit_y, y_aug[g_aug != fold]])
            mean, basis, _ = pca_basis(fit_x, variance)
            z = (fit_x - mean) @ basis
            scale = np.sqrt((z**2).sum(axis=1).mean())
            w, b = softmax_regression(z / scale, fit_y, classes, l2)
            held = groups == fold
            fold_scores.append(accuracy(w, b, project(x_train[held], mean, basis, scale),
                                        y_train[held]))  # fmt: skip
        scores[l2] = float(np.mean(fold_scores))
    best = max(scores, key=scores.get)
    fit_x, fit_y = x_train, y_train
    if extra is not None:
        fit_x, fit_y = np.vstack([fit_x, x_aug]), np.concatenate([fit_y, y_aug])
    mean, basis, k = pca_basis(fit_x, variance)
    z = (fit_x - mean) @ basis
    scale = np.sqrt((z**2).sum(axis=1).mean())
    w, b = softmax_regression(z / scale, fit_y, classes, best)
    top1 = accuracy(w, b, project(data["x"][test], mean, basis, scale), data["y"][test])
    return {"variance": variance, "k": k, "augmented": extra is not None, "cv": scores,
            "chosen_l2": best, "test_top1": top1}  # fmt: skip


def mirrored_features(data: dict, weights: str) -> dict:
    """MobileNetV2 features of left-right mirrored Training images."""
    import io

    from PIL import Image, ImageOps

    from fruits_assets import featurizer

    model = featurizer.Featurizer(featurizer.load_weight_arrays(
        featurizer.resolve_weights(weights))[0])  # fmt: skip
    train = data["split"] == "training"
    contents = []
    for path in data["paths"][train]:
        with Image.open(path) as image:
            buffer = io.BytesIO()
            ImageOps.mirror(image.convert("RGB")).save(buffer, format="PNG")
            contents.append(buffer.getvalue())
    started = time.perf_counter()
    x = model(contents).astype(np.float64)
    print(f"featurized {len(contents)} mirrored images in {time.perf_counter() - started:.0f} s")
    return {"x": x, "y": data["y"][train], "frames": data["frames"][train]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--weights")
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--variances", type=float, nargs="+", default=[0.90, 0.95, 0.99])
    args = parser.parse_args()
    data = load(args.output)
    results = []
    extra = mirrored_features(data, args.weights) if args.augment else None
    for variance in args.variances:
        for augment in ([None, extra] if extra is not None else [None]):
            started = time.perf_counter()
            result = evaluate(data, variance, augment)
            result["seconds"] = round(time.perf_counter() - started, 1)
            print(json.dumps(result), flush=True)
            results.append(result)
    Path(args.output, "classifier_study.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
