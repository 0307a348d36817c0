"""The asset checks: their names, how they are declared and how their results are built."""

from __future__ import annotations

import dagster as dg

RAW_VS_LABELED_BALANCE = "every_file_labeled_or_rejected"
FEATURES_ONE_PER_IMAGE = "one_feature_row_per_accepted_image"
FEATURES_DIMENSION = "vectors_have_1280_finite_values"
PCA_K_BOUNDS = "k_within_bounds"
PCA_VARIANCE_REACHED = "target_variance_reached"
ROWS_MATCH_FEATURES = "row_count_equals_features"
VECTOR_LENGTH_K = "vector_length_equals_k"
CSV_COLUMNS_K = "column_count_equals_k_plus_2"
LABELS_MATCH_CLASSES = "label_set_equals_discovered_classes"
ACCURACY_FLOOR = "top1_accuracy_above_floor"
SERVING_MATCHES_SPARK = "serving_export_matches_spark"
# A failed check's cause in one line, for the run's error (the full lists stay in the metadata).
SUMMARY = "summary"


def spec(name: str, asset: str, description: str) -> dg.AssetCheckSpec:
    """Data-integrity checks block downstream assets when they fail."""
    return dg.AssetCheckSpec(name=name, asset=asset, description=description, blocking=True)


def result(name: str, passed: bool, **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name,
        passed=bool(passed),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={k: v for k, v in metadata.items() if v is not None},
    )


def labels_match(
    classes: list[str], labels: set[str], why_missing: str = ""
) -> dg.AssetCheckResult:
    """The label set of an output equals the classes of the input root. When it does not, its
    `SUMMARY` counts and names a few of the classes without rows (`why_missing` added) and of
    the labels that are not classes."""
    missing, extra = sorted(set(classes) - labels), sorted(labels - set(classes))
    causes = []
    if missing:
        verb = "has" if len(missing) == 1 else "have"
        causes.append(
            f"{len(missing)} of the input root's {len(classes)} classes {verb} no rows "
            f"({a_few(missing)})" + (f"; {why_missing}" if why_missing else "")
        )
    if extra:
        are = "label is not a class" if len(extra) == 1 else "labels are not classes"
        causes.append(f"{len(extra)} {are} of the input root ({a_few(extra)})")
    return result(
        LABELS_MATCH_CLASSES,
        not missing and not extra,
        **{SUMMARY: "; ".join(causes) or None},
        num_labels=len(labels),
        missing_classes=missing,
        unexpected_labels=extra,
    )


def a_few(names: list, shown: int = 3) -> str:
    """The first `shown` names, and how many more."""
    more = len(names) - shown
    return ", ".join(map(str, names[:shown])) + (f" and {more} more" if more > 0 else "")
