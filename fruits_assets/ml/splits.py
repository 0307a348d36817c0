"""Train/test splits: the dataset's own folders when it has them, else a stratified hold-out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

TRAIN, TEST = "train", "test"
# Folder names (above the class folder) that name a split, as Fruits-360 lays them out.
SPLIT_FOLDERS = {"training": TRAIN, "train": TRAIN, "test": TEST, "testing": TEST}
FOLDER_SPLIT = "the dataset's own Training/Test folders"
HOLDOUT_BUCKETS = 5  # no split folders: 1 in 5 images of each class (by path hash) is held out


def split_folder(path: Column) -> Column:
    """train/test from the folder above the class folder, or null when it names no split."""
    folder = F.lower(F.element_at(F.split(path, "/"), -3))
    mapping = F.create_map(*[F.lit(x) for kv in SPLIT_FOLDERS.items() for x in kv])
    return mapping[folder]


def split_of_path(path: str) -> str | None:
    """`split_folder` of one path, in Python."""
    parts = path.split("/")
    return SPLIT_FOLDERS.get(parts[-3].lower()) if len(parts) >= 3 else None


def split_counts(path: Column) -> list[Column]:
    """Aggregates of a group of images: how many the folders put on each side, and on neither."""
    split = split_folder(path)
    return [  # counts, so a group with none on a side has 0 there (a sum of nulls is null)
        F.count(F.when(split == TRAIN, 1)).alias("train"),
        F.count(F.when(split == TEST, 1)).alias("test"),
        F.count(F.when(split.isNull(), 1)).alias("none"),
    ]


def folders_split(per_class: Iterable[Mapping[str, int]]) -> bool:
    """Whether the folders are a usable split: every class (a group of `split_counts`, or
    several groups of one class) has images on both sides and none outside them."""
    totals: dict[str, list[int]] = {}
    for group in per_class:
        counts = totals.setdefault(group["label"], [0, 0, 0])
        for i, side in enumerate(("train", "test", "none")):
            counts[i] += group[side] or 0
    return all(train > 0 and test > 0 and none == 0 for train, test, none in totals.values())


def with_split(df: DataFrame, folders: bool | None = None) -> tuple[DataFrame, str]:
    """Add a `split` column; the second value says where the split came from, for metadata.

    `folders`: whether the folders split `df`'s classes (`folders_split`), when the caller
    already knows it; otherwise a Spark job finds out."""
    df = df.withColumn("split", split_folder(F.col("path")))
    if folders is None:
        per_label = df.groupBy("label").agg(*split_counts(F.col("path")))
        folders = folders_split(r.asDict() for r in per_label.collect())
    if folders:
        return df, FOLDER_SPLIT
    # Deterministic and stratified: a hash of the path ranks the images of each class, and every
    # 5th by rank (the first included) is held out, so each class with 2+ images has a test image.
    by_class = Window.partitionBy("label")
    rank = F.row_number().over(by_class.orderBy(F.xxhash64("path"), "path")) - 1
    size = F.count("*").over(by_class)
    test = (rank % HOLDOUT_BUCKETS == 0) & (size >= 2)
    held_out = df.withColumn("split", F.when(test, TEST).otherwise(TRAIN))
    return held_out, (
        f"no usable Training/Test folders: a deterministic 1-in-{HOLDOUT_BUCKETS} hold-out per "
        "class by path hash (beware: Fruits-360 images are video frames, near-duplicates leak)"
    )


def training_rows(df: DataFrame, folders: bool | None = None) -> tuple[DataFrame, str]:
    """The rows a model may learn from: the Training split when the dataset has one, else all
    (`folders` as for `with_split`)."""
    with_splits, source = with_split(df, folders)
    if source == FOLDER_SPLIT:
        training = with_splits.where(F.col("split") == TRAIN).drop("split")
        return training, training_source(True)
    return df, training_source(False)


def training_source(folders: bool) -> str:
    """What `training_rows` says its rows are, knowing whether the folders split the data."""
    if folders:
        return "Training split only (no Test image leaks into the PCA)"
    return "all images (the input has no usable Training/Test split)"
