"""Unit tests of the pure pieces: discovery, decoding, k selection, partition ranges."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fruits_assets import partitions
from fruits_assets.ml import decoding, pca, plots, training
from fruits_assets.storage import discovery, layout
from fruits_assets_tests.helpers import fruits, local_spark, publish_rows
from fruits_assets_tests.images import BAD_CLASS, EXPECTED, GOOD_CLASS, noisy_jpeg, write_mixed_root


def test_scan_labels_by_parent_folder_and_counts_ignored(tmp_path):
    expected = write_mixed_root(tmp_path)
    scan = discovery.scan(str(tmp_path))
    assert scan.classes == sorted([GOOD_CLASS, BAD_CLASS])
    assert len(scan.images) == expected["images"]
    # The split folder stays in the path; the label is the class folder.
    assert all("/Training/" in i.path or "/Test/" in i.path for i in scan.images)
    assert scan.ignored_counts() == {
        discovery.IGNORED_HIDDEN: 3,
        discovery.IGNORED_NOT_IMAGE: 1,
        discovery.IGNORED_NO_CLASS: 1,
    }


def test_scan_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discovery.scan(str(tmp_path / "nope"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_decode_accepts_or_rejects_with_reason(tmp_path, name):
    write_mixed_root(tmp_path)
    decoded = decoding.decode((tmp_path / "Test" / BAD_CLASS / name).read_bytes())
    if EXPECTED[name] is None:
        assert decoded.ok, decoded.reason
        with Image.open(io.BytesIO(decoded.content)) as image:
            assert image.mode == "RGB"
    else:
        assert not decoded.ok
        assert decoded.reason.startswith(EXPECTED[name])


def test_sixteen_bit_is_scaled_not_clipped():
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16)).save(buffer, format="PNG")
    decoded = decoding.decode(buffer.getvalue())
    with Image.open(io.BytesIO(decoded.content)) as image:
        assert 120 <= np.asarray(image)[0, 0, 0] <= 135  # mid-grey, not white


def test_plain_rgb_jpeg_keeps_its_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, format="JPEG")
    assert decoding.decode(buffer.getvalue()).content == buffer.getvalue()


def test_choose_k_is_smallest_reaching_target():
    variance = [0.5, 0.3, 0.15, 0.04, 0.01]
    assert pca.choose_k(variance, 0.8) == (2, pytest.approx(0.8))
    assert pca.choose_k(variance, 0.99)[0] == 4
    assert pca.choose_k(variance, 1.0)[0] == 5


def test_max_components_bounded_by_rows_and_features():
    assert pca.max_components(100, 1280) == 99
    assert pca.max_components(5000, 1280) == 1280
    with pytest.raises(ValueError):
        pca.max_components(1, 1280)


def _rank_deficient_features(rows: int = 40, dim: int = 64) -> np.ndarray:
    """Fewer rows than dimensions, a large common offset, a few strong directions: what 1280-d
    MobileNetV2 features of a few hundred photos look like to a PCA."""
    rng = np.random.default_rng(7)
    strong = rng.normal(size=(rows, 5)) * [9, 5, 3, 2, 1] @ rng.normal(size=(5, dim))
    return (3.0 + strong + 0.01 * rng.normal(size=(rows, dim))).astype(np.float32)


def test_moments_merged_in_any_order_give_the_covariance():
    x = _rank_deficient_features().astype(np.float64)
    parts = [pca.Moments.of(x[i : i + 7]) for i in range(0, len(x), 7)]
    merged = parts[0]
    for part in parts[1:]:
        merged = part + merged
    np.testing.assert_allclose(merged.scatter / (merged.n - 1), np.cov(x, rowvar=False), atol=1e-9)


def test_principal_components_are_the_covariance_eigenvectors_largest_first():
    x = _rank_deficient_features().astype(np.float64)
    cov = np.cov(x, rowvar=False)
    ratio, components = pca.principal_components(cov, 39)
    expected = np.linalg.svd(x - x.mean(axis=0), compute_uv=False) ** 2
    np.testing.assert_allclose(ratio, (expected / expected.sum())[:39], atol=1e-9)
    assert ratio[0] > 0.5 and np.all(np.diff(ratio) <= 1e-12)
    # Orthonormal, and each one an eigenvector of its eigenvalue.
    np.testing.assert_allclose(components @ components.T, np.eye(39), atol=1e-8)
    np.testing.assert_allclose(cov @ components[0], ratio[0] * np.trace(cov) * components[0])
    # The sign is fixed, so a refit on the same features gives the same projections.
    again = pca.principal_components(cov.copy(), 39)[1]
    np.testing.assert_array_equal(components, again)
    with pytest.raises(ValueError, match="no variance"):
        pca.principal_components(np.zeros((4, 4)), 3)


def test_local_spark_creates_files_without_starting_a_process_for_each(tmp_path):
    """The run's local Spark reaches local files through the drop-in file system that scripts/
    fetch_jars.sh fetches (permissions set through Java's file API, not a `chmod` process per
    file): a partitioned Delta table written through it has Hadoop's permissions (its default
    umask, 022), checksums beside its files, and reads back whole."""
    import stat

    from fruits_assets.resources.spark import LOCAL_FS_CLASS

    spark = local_spark()
    jvm = spark.sparkContext._jvm
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    local = jvm.org.apache.hadoop.fs.FileSystem.get(jvm.java.net.URI("file:///"), hadoop)
    assert local.getClass().getName() == LOCAL_FS_CLASS
    table = tmp_path / "table"
    labels = ["Kiwi 1", "Kiwi [bio] #1", "Pomme Dorée 2"]
    rows = spark.createDataFrame([(i, labels[i % 3]) for i in range(6)], "id long, label string")
    rows.write.format("delta").partitionBy("label").save(f"file://{table}")
    rows.where("label = 'Kiwi 1'").write.format("delta").mode("overwrite").option(
        "replaceWhere", "label = 'Kiwi 1'"
    ).save(f"file://{table}")
    read = spark.read.format("delta").load(f"file://{table}")
    assert read.count() == 6 and {
        r.label for r in read.select("label").distinct().collect()
    } == set(labels)
    first = spark.read.format("delta").option("versionAsOf", 0).load(f"file://{table}")
    assert first.count() == 6
    folders = list(table.glob("label=*"))
    files = list(table.glob("label=*/*.parquet"))
    assert len(folders) == 3 and len(files) >= 4
    assert {stat.S_IMODE(f.stat().st_mode) for f in folders} == {0o755}
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o644}
    assert all((f.parent / f".{f.name}.crc").exists() for f in files)


def test_local_spark_interprets_queries_unless_told_to_compile_them():
    from fruits_assets.resources.spark import INTERPRETED_SQL_CONFIG, local_spark_config
    from fruits_assets.settings import FruitsSettings

    spark = local_spark()
    rows = spark.range(0, 1000, numPartitions=2).selectExpr("id % 7 AS k", "id * 2 AS v")
    query = rows.where("v > 10").groupBy("k").sum("v")
    expected = {k: sum(2 * i for i in range(1000) if i % 7 == k and 2 * i > 10) for k in range(7)}
    assert {row["k"]: row["sum(v)"] for row in query.collect()} == expected
    # The final plan, once run: compiled stages would show as "*(1) HashAggregate ...".
    plan = query._jdf.queryExecution().executedPlan().toString()
    assert "HashAggregate" in plan and "*(" not in plan, plan
    assert spark.conf.get("spark.sql.codegen.factoryMode") == "NO_CODEGEN"
    compiled = local_spark_config(FruitsSettings(spark_codegen=True))
    assert not set(INTERPRETED_SQL_CONFIG) & set(compiled)


def _worker_imports(_rows):
    import importlib
    import sys

    import py4j
    import pyspark

    importlib.import_module("pyspark.sql.pandas.serializers")  # imported after the fork
    yield (pyspark.__file__, py4j.__file__, sys.modules["pyspark.sql.pandas.serializers"].__file__,
           [entry for entry in sys.path if entry.endswith((".zip", ".jar"))])  # fmt: skip


def test_local_sparks_python_workers_import_the_installed_pyspark(tmp_path):
    """The workers of local Spark import pyspark's installed package, with no archive of Spark's
    on their import path; where the installed pyspark is not the archived one, or is missing,
    the path stays as Spark made it."""
    import pyspark

    from fruits_assets.ml import worker_daemon

    installed = os.path.dirname(pyspark.__file__)
    (found,) = (
        local_spark().sparkContext.parallelize([0], 1).mapPartitions(_worker_imports).collect()
    )
    pyspark_file, py4j_file, serializers_file, archives = found
    assert pyspark_file == pyspark.__file__
    assert serializers_file.startswith(installed + os.sep)
    assert ".zip" not in py4j_file
    assert not [entry for entry in archives if entry.startswith(installed)], archives

    home = tmp_path / "spark"
    (home / "python" / "lib").mkdir(parents=True)
    archive = home / "python" / "lib" / "pyspark.zip"
    jar = home / "jars" / "spark-core.jar"
    jar.parent.mkdir()
    jar.write_bytes(b"")
    path = [str(archive), str(jar), *sys.path]
    for version in (pyspark.__version__, "0.0.1"):
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("pyspark/version.py", f'__version__: str = "{version}"\n')
        kept = worker_daemon.without_archives(path, str(home))
        assert kept == (sys.path if version == pyspark.__version__ else path)
    outside = [entry for entry in sys.path if "site-packages" not in entry]
    assert worker_daemon.without_archives([str(archive), *outside], str(home))[0] == str(archive)
    assert worker_daemon.without_archives(path, None) == path


def test_a_runs_jvm_keeps_the_optimizing_compiler_for_spark_ml_only():
    """The compiler directives are accepted by this machine's JVM (a bad file stops the JVM
    before Spark starts), and only per-run JVMs get them; a run without Spark ML stops at the
    quick compiler."""
    from fruits_assets.resources.spark import COMPILER_DIRECTIVES, local_spark_config
    from fruits_assets.settings import FruitsSettings

    def options(**kwargs) -> str:
        settings = FruitsSettings(**kwargs.pop("settings", {}))
        return local_spark_config(settings, **kwargs)["spark.driver.extraJavaOptions"]

    assert f"-XX:CompilerDirectivesFile={COMPILER_DIRECTIVES}" in options()
    for jit_everywhere in (options(settings={"spark_jit": "all"}), options(long_lived=True)):
        assert "CompilerDirectives" not in jit_everywhere
        assert "--add-modules=jdk.incubator.vector" in jit_everywhere
    without_ml = options(spark_ml=False)
    assert "-XX:TieredStopAtLevel=1" in without_ml and "CompilerDirectives" not in without_ml
    assert "TieredStopAtLevel" not in options(settings={"spark_jit": "all"}, spark_ml=False)
    assert "TieredStopAtLevel" not in options(long_lived=True, spark_ml=False)
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    flags = [option for option in shlex.split(options()) if option.startswith("-XX:")]
    done = subprocess.run(
        [java, *flags, "-XX:+CompilerDirectivesPrint", "-version"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "org/apache/spark/ml/" in done.stdout + done.stderr
    flags = [option for option in shlex.split(without_ml) if option.startswith("-XX:")]
    done = subprocess.run([java, *flags, "-version"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_recorded_class_archive_serves_the_next_local_spark_jvm(tmp_path, monkeypatch):
    """`fruits jvm-archive` records the classes a local Spark JVM loads; the next JVM started
    with the run's configuration maps Spark's and Delta's classes from it. Nothing is mapped
    before it is recorded, or where a configuration folder with files is on the class path."""
    from fruits_assets.resources import class_archive
    from fruits_assets.resources.spark import local_spark_config
    from fruits_assets.settings import FruitsSettings

    settings = FruitsSettings.from_env(cache_dir=str(tmp_path / "cache"))
    assert "SharedArchiveFile" not in local_spark_config(settings)["spark.driver.extraJavaOptions"]
    env = {"FRUITS_CACHE_DIR": settings.cache_dir}
    done = fruits("jvm-archive", home=tmp_path / "home", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    (archive,) = (tmp_path / "cache" / "jvm").glob("spark-classes-*.jsa")
    assert f"class archive: {archive}" in done.stdout
    assert not list(archive.parent.glob(".*.tmp"))  # recorded aside, then renamed into place
    options = local_spark_config(settings)["spark.driver.extraJavaOptions"]
    assert f"-XX:SharedArchiveFile={archive}" in options

    loaded = tmp_path / "classes.log"
    script = (
        "import sys\n"
        "from pyspark.sql import SparkSession\n"
        "from fruits_assets.resources.spark import local_spark_config\n"
        "from fruits_assets.settings import FruitsSettings\n"
        f"config = local_spark_config(FruitsSettings.from_env(cache_dir={settings.cache_dir!r}))\n"
        "config['spark.driver.extraJavaOptions'] += "
        f"' -Xlog:class+load=info:file={loaded}'\n"
        "spark = SparkSession.builder.config(map={k: str(v) for k, v in config.items()})"
        ".getOrCreate()\n"
        f"spark.range(3).write.format('delta').save('file://{tmp_path}/table')\n"
        f"print(spark.read.format('delta').load('file://{tmp_path}/table').count())\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.strip().endswith("3"), ran.stderr[-3000:]
    lines = loaded.read_text().splitlines()
    mapped = [line for line in lines if line.endswith("source: shared objects file (top)")]
    assert any(" org.apache.spark.sql.delta." in line for line in mapped)
    assert any(" org.apache.spark.SparkContext " in line for line in mapped)

    again = fruits("jvm-archive", home=tmp_path / "home", env=env)
    assert again.returncode == 0 and "recorded before" in again.stdout
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "spark-defaults.conf").write_text("")
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf))
    assert "SharedArchiveFile" not in local_spark_config(settings)["spark.driver.extraJavaOptions"]
    with pytest.raises(class_archive.ArchiveError, match=r"SPARK_CONF_DIR .* holds files"):
        class_archive.record({}, settings.cache_dir)


def test_a_log4j2_configuration_in_sparks_folder_applies_instead_of_the_projects(
    tmp_path, monkeypatch
):
    """Local Spark logs with the project's configuration (warnings and errors), unless
    Spark's configuration folder holds the user's own."""
    from fruits_assets.resources.spark import LOG_CONFIG, driver_java_options
    from fruits_assets.settings import FruitsSettings

    settings = FruitsSettings.from_env()
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    ours = f"-Dlog4j2.configurationFile={LOG_CONFIG}"
    assert ours in driver_java_options(settings) and LOG_CONFIG.is_file()
    (tmp_path / "log4j2.properties").write_text("rootLogger.level = info\n")
    assert "log4j2.configurationFile" not in driver_java_options(settings)


def test_pruning_keeps_the_class_archives_in_use(tmp_path):
    """An archive a run maps is marked as used: recording the archives of three other
    environments (other checkouts' setups) prunes the least recently used, not it."""
    from fruits_assets.resources import class_archive
    from fruits_assets.resources.spark import local_spark_config
    from fruits_assets.settings import FruitsSettings

    settings = FruitsSettings.from_env(cache_dir=str(tmp_path / "cache"))
    config = local_spark_config(settings, spark_ml=False)
    ours = class_archive.archive_path(config, settings.cache_dir)
    if ours is None:
        pytest.skip(f"no class archive can serve local Spark here: {class_archive.obstacle()}")
    ours.parent.mkdir(parents=True)
    others = [ours.with_name(f"spark-classes-other{i}.jsa") for i in range(4)]
    for age, path in enumerate([ours, *others[:2]]):
        path.write_bytes(b"archive")
        os.utime(path, (1_000_000 + age, 1_000_000 + age))  # recorded long ago, ours first
    # A run maps ours (the options of the run's JVM): it is the most recently used now.
    assert (
        f"-XX:SharedArchiveFile={ours}"
        in local_spark_config(settings)["spark.driver.extraJavaOptions"]
    )
    for path in others[2:]:  # two more environments record theirs
        path.write_bytes(b"archive")
    class_archive._prune(ours.parent, keep=class_archive.KEPT)
    kept = sorted(p.name for p in ours.parent.glob("spark-classes-*.jsa"))
    assert kept == sorted([ours.name, others[2].name, others[3].name])


def _predictor(rng, pc, n_classes=4, hist_dims=6, reg_param=1e-3):
    from fruits_assets.ml.serving import Predictor

    k = pc.shape[1]
    return Predictor(
        pc=pc,
        pca_mean=rng.normal(size=k),
        pca_scale=rng.uniform(0.5, 2.0, size=k),
        hist_mean=rng.normal(size=hist_dims),
        hist_scale=rng.uniform(0.5, 2.0, size=hist_dims),
        coefficients=rng.normal(size=(n_classes, k + hist_dims)),
        intercepts=rng.normal(size=n_classes),
        labels=[f"c{i}" for i in range(n_classes)],
        weights_sha256="0" * 64,
        featurizer_model=b"",
        reg_param=reg_param,
    )


def test_carried_over_coefficients_keep_the_published_predictions_on_a_refitted_pca():
    """A refitted PCA may turn, flip and reorder its components and the scalers move: the
    carried-over model still gives the published one's probabilities."""
    from dataclasses import replace

    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(20, 5)))[0]  # the features live in a 5-d subspace
    old = _predictor(rng, basis)
    turn = np.linalg.qr(rng.normal(size=(5, 5)))[0] * np.array([1, -1, 1, -1, 1])
    new_pc = basis @ turn
    fresh = _predictor(rng, new_pc)  # new centres and scales
    coefficients, intercepts = training.carried_over(
        old, new_pc, fresh.pca_mean, fresh.pca_scale, fresh.hist_mean, fresh.hist_scale
    )
    carried = replace(fresh, coefficients=coefficients, intercepts=intercepts)
    features = rng.normal(size=(50, 5)) @ basis.T * 3
    histograms = rng.uniform(size=(50, 6))
    np.testing.assert_allclose(
        carried.probabilities(features, histograms),
        old.probabilities(features, histograms),
        atol=1e-10,
    )


def test_spark_regression_starts_from_given_coefficients():
    """The starting point reaches Spark's optimizer: started at a converged fit's coefficients,
    the first objective is that fit's last, well below the start from zero."""
    from pyspark.ml.linalg import Vectors

    spark = local_spark()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 4)) * 2
    rows = [
        (float(c), Vectors.dense(centres[c] + rng.normal(size=4))) for c in rng.integers(0, 3, 300)
    ]
    data = spark.createDataFrame(rows, ["y", "z"]).cache()
    regression = training.softmax_regression(50).setRegParam(1e-3)
    converged = regression.fit(data)
    cold = converged.summary.objectiveHistory
    warm = training.start_from(
        training.softmax_regression(2).setRegParam(1e-3),
        converged.coefficientMatrix.toArray(),
        converged.interceptVector.toArray(),
    ).fit(data)
    history = warm.summary.objectiveHistory
    assert history[0] == pytest.approx(cold[-1], rel=1e-6) and history[0] < cold[0] / 2
    assert history[-1] <= history[0]


def test_cross_validation_folds_follow_the_photos_not_the_rows_order():
    """The same photos delivered in another order and other partitions, or under another input
    root, fall in the same folds, so the cross-validation scores each L2 strength alike (a
    random fold per row would not)."""
    from pyspark.ml.linalg import Vectors
    from pyspark.ml.tuning import ParamGridBuilder
    from pyspark.sql import functions as F

    spark = local_spark()
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 4))
    rows = [
        (f"/in/Training/c{c}/{i}_100.jpg", float(c), Vectors.dense(centres[c] + rng.normal(size=4)))
        for i, c in enumerate(rng.integers(0, 3, 240))
    ]
    folded = training.fold_of(F.col("path"), 3).alias(training.FOLD)
    one = spark.createDataFrame(rows, ["path", "y", "z"]).coalesce(1).select("*", folded)
    other = spark.createDataFrame(rows[::-1], ["path", "y", "z"]).repartition(3)
    other = other.select("*", folded)

    folds = dict(one.select("path", training.FOLD).collect())
    assert folds == dict(other.select("path", training.FOLD).collect())
    moved = spark.createDataFrame([(f"s3a://bucket/copy{p[3:]}",) for p in folds], ["path"])
    moved_folds = dict(moved.select("path", folded).collect())
    assert {p[3:]: f for p, f in folds.items()} == {
        p.removeprefix("s3a://bucket/copy"): f for p, f in moved_folds.items()
    }  # the same photos under another input root
    assert sorted(Counter(folds.values())) == [0, 1, 2]
    assert min(Counter(folds.values()).values()) > 240 / 3 / 2  # folds of comparable sizes

    regression = training.softmax_regression(20)
    grid = ParamGridBuilder().addGrid(regression.regParam, [1e-3, 1.0]).build()
    scores = []
    for data in (one, other):
        scores.append(training.cross_validator(regression, grid, 3).fit(data.cache()).avgMetrics)
        data.unpersist()
    assert scores[0] == pytest.approx(scores[1], abs=1e-12)
    assert scores[0][0] != scores[0][1]  # the two strengths told apart


def test_too_few_training_photos_for_the_folds_fail_naming_the_remedy():
    """Photos too few to fill every fold stop the cross-validation with what to change, not
    Spark's bare "at fold N is empty"."""
    from pyspark.ml.linalg import Vectors
    from pyspark.ml.tuning import ParamGridBuilder
    from pyspark.sql import functions as F

    spark = local_spark()
    rows = [(f"/in/Training/c{c}/{c}_100.jpg", float(c), Vectors.dense([c, 1.0])) for c in (0, 1)]
    data = spark.createDataFrame(rows, ["path", "y", "z"])
    data = data.select("*", training.fold_of(F.col("path"), 5).alias(training.FOLD))
    regression = training.softmax_regression(5)
    grid = ParamGridBuilder().addGrid(regression.regParam, [1e-3, 1.0]).build()
    with pytest.raises(training.EmptyFoldError) as raised:
        training.cross_validated(regression, grid, 5, data)
    message = str(raised.value)
    assert message.startswith("Cross-validation needs training photos in each of its 5 folds")
    assert "is empty" in message
    assert "lower `cv_folds`" in message and "one L2 strength" in message


def test_class_order_is_string_indexers_whatever_the_characters():
    """The classes of a run's pca_features_parquet are indexed without a Spark job, in the
    order StringIndexer would give them (the published classifier's labels compare equal)."""
    from pyspark.ml.feature import StringIndexer

    labels = ["Kiwi 1", "kiwi", "Apple 6", "Äpfel", "\U0001d538pple", "\uff21pple", "Zebra 2"]
    spark = local_spark()
    data = spark.createDataFrame([(label,) for label in labels * 2], ["label"])
    fitted = StringIndexer(inputCol="label", outputCol="y", stringOrderType="alphabetAsc").fit(data)
    assert training.class_order(labels) == list(fitted.labelsArray[0])
    assert training.class_order(labels) != sorted(labels)  # Python's order is another


def test_spark_covariance_matches_numpy_whatever_the_partitioning(monkeypatch):
    spark = local_spark()
    x = _rank_deficient_features()
    df = spark.createDataFrame([(row.tolist(),) for row in x], "features array<float>")
    expected = np.cov(x.astype(np.float64), rowvar=False)
    for parts in (1, 3, 8):
        n, cov = pca.covariance(df.repartition(parts), "features")
        assert n == len(x)
        np.testing.assert_allclose(cov, expected, atol=1e-9)
    assert pca.covariance(df.limit(0), "features")[0] == 0
    # Rows in blocks of a few, merged on the workers first (as on a cluster of many cores).
    monkeypatch.setattr(pca, "BLOCK_ROWS", 7)
    monkeypatch.setattr(pca, "MAX_MERGED_ON_DRIVER", 1)
    n, cov = pca.covariance(df.repartition(5), "features")
    assert n == len(x)
    np.testing.assert_allclose(cov, expected, atol=1e-9)


def test_projections_are_the_features_times_the_components_and_bad_vectors_say_why():
    spark = local_spark()
    x = _rank_deficient_features()
    components = np.random.default_rng(3).normal(size=(4, x.shape[1]))
    df = spark.createDataFrame(
        [(f"p{i}", "Kiwi", row.tolist()) for i, row in enumerate(x)],
        "path string, label string, features array<float>",
    )
    rows = pca.projected(df.repartition(3), components, "features", "pca", ("path", "label"))
    assert rows.schema.simpleString() == "struct<path:string,label:string,pca:array<float>>"
    assert rows.schema["pca"].nullable and rows.schema["pca"].dataType.containsNull
    assert pca.projected(df.limit(0), components, "features", "pca", ("path",)).count() == 0
    got = {r["path"]: r["pca"] for r in rows.collect()}
    expected = x.astype(np.float64) @ components.T
    for i, row in enumerate(expected):
        np.testing.assert_allclose(got[f"p{i}"], row, rtol=1e-5, atol=1e-4)
    ragged = spark.createDataFrame(
        [("a", "Kiwi", [1.0, 2.0]), ("b", "Kiwi", [1.0])],
        "path string, label string, features array<float>",
    )
    with pytest.raises(Exception, match="feature vectors of different lengths"):
        pca.projected(ragged.coalesce(1), np.ones((1, 2)), "features", "pca", ("path",)).collect()
    with pytest.raises(Exception, match="feature vectors of 2 values where 3 are expected"):
        pca.projected(ragged.limit(1), np.ones((1, 3)), "features", "pca", ("path",)).collect()
    holed = spark.createDataFrame(
        [("a", [1.0, None]), ("b", None)], "path string, features array<float>"
    )
    with pytest.raises(Exception, match="feature vectors with missing values"):
        pca.projected(holed.limit(1), np.ones((1, 2)), "features", "pca", ("path",)).collect()
    with pytest.raises(Exception, match="feature vectors are null"):
        pca.moments(holed.where("path = 'b'"), "features")


def test_python_workers_read_a_tables_files_only_where_they_hold_exactly_its_rows(tmp_path):
    """The moments, projections and rows the workers compute or read from a table's files
    (class folders with escaped names included) equal those through Spark's reader; a table
    whose files may hold deleted rows (deletion vectors) is not read that way."""
    from pyspark.sql import types as T

    from fruits_assets.resources.storage import FruitsStorage
    from fruits_assets.storage import datasets as datasets_module
    from fruits_assets.storage import filesystem
    from fruits_assets.storage.datasets import Datasets
    from fruits_assets.storage.table_files import DataFile

    def same(found, kept) -> bool:  # the same files and classes, whatever the URIs' form
        def key(files):
            return sorted((filesystem.normalize_uri(f.uri), f.label or "") for f in files)

        return key(found) == key(kept)

    spark = local_spark()
    storage = FruitsStorage(images_root=str(tmp_path / "in"), output_root=str(tmp_path / "out"))
    datasets = Datasets(spark, storage, "run-1")
    table = layout.MOBILENET_FEATURES
    x = _rank_deficient_features(60, 16)
    labels = ["Kiwi 1", "100% Pear", "Fig=3"]
    rows = [
        (f"/in/{('Training', 'Test')[i % 2]}/{labels[i % 3]}/{i}.jpg", labels[i % 3], v.tolist())
        for i, v in enumerate(x)
    ]
    schema = "path string, label string, features array<float>"
    publish_rows(datasets, spark.createDataFrame(rows, schema), table, set(labels))
    files = datasets.data_files(table, ["Kiwi 1", "100% Pear"])  # as the publish kept them
    assert sorted(f.label for f in files) == ["100% Pear", "Kiwi 1"]
    assert datasets.data_files(table) is None  # a partitioned table: which classes?
    datasets_module._FACTS.clear()  # another process: as Delta's log lists them
    assert same(datasets.data_files(table, ["Kiwi 1", "100% Pear"]), files)
    assert datasets.data_files(table) is None
    # One class replaced, in a commit this process did not make: the live files only, the
    # files Spark's reader would read.
    kiwis = [r for r in rows if r[1] == "Kiwi 1"][:4]
    publish_rows(datasets, spark.createDataFrame(kiwis, schema), table, {"Kiwi 1"})
    datasets_module._FACTS.clear()
    live = datasets.data_files(table, labels)
    spark_files = [DataFile(uri) for uri in datasets.read(table).inputFiles()]
    assert same([DataFile(f.uri) for f in live], spark_files) and len(live) == 3
    assert {f.label for f in live} == set(labels)
    publish_rows(datasets, spark.createDataFrame(rows, schema), table, set(labels))

    both = datasets.data_files(table, labels)
    training = x.astype(np.float64)[0::2]
    got = pca.moments_of_files(spark, both, "features", training_only=True)
    assert got.n == len(training)
    np.testing.assert_allclose(got.covariance(), np.cov(training, rowvar=False), atol=1e-9)
    assert pca.moments_of_files(spark, both, "features", training_only=False).n == len(x)

    components = np.random.default_rng(5).normal(size=(3, x.shape[1]))
    stored = datasets.read(table)
    through_spark = pca.projected(stored, components, "features", "pca", ("path", "label"))
    from_files = pca.projected(stored, components, "features", "pca", ("path", "label"), files=both)
    assert from_files.schema == through_spark.schema
    expected = {(r["path"], r["label"]): r["pca"] for r in through_spark.collect()}
    got_rows = {(r["path"], r["label"]): r["pca"] for r in from_files.collect()}
    assert got_rows.keys() == expected.keys()
    for key, values in expected.items():
        np.testing.assert_allclose(got_rows[key], values, rtol=1e-6)
    with pytest.raises(Exception, match="feature vectors of 16 values where 2 are expected"):
        pca.projected(stored, np.ones((1, 2)), "features", "pca", ("path",), files=both).collect()

    # Rows for Spark's own operators (the classifier's join): those Spark's reader gives.
    def rows_of(frame) -> list:
        return sorted(tuple(row) for row in frame.collect())

    vectors = T.StructType(
        [
            T.StructField("features", T.ArrayType(T.FloatType())),
            T.StructField("path", T.StringType()),
        ]
    )
    some = ["Kiwi 1", "Fig=3"]
    assert datasets.data_files(table, some) is not None
    by_workers = datasets.frame(table, vectors, some)
    assert by_workers.schema == vectors
    assert len(rows_of(by_workers)) == 40
    assert rows_of(by_workers) == rows_of(
        stored.where("label IN ('Kiwi 1', 'Fig=3')").select("features", "path")
    )
    wrong = T.StructType([T.StructField("path", T.FloatType())])
    with pytest.raises(Exception, match=r"label=Kiwi.{1,3}1/.*do not read as"):
        datasets.frame(table, wrong, ["Kiwi 1"]).collect()

    # A table not partitioned by class: all its files, the class from its rows.
    flat = layout.PCA_FEATURES_PARQUET
    publish_rows(datasets, spark.createDataFrame(rows, schema), flat)
    kept = datasets.data_files(flat)
    assert kept and {f.label for f in kept} == {None}
    datasets_module._FACTS.clear()
    assert same(datasets.data_files(flat), kept)
    # Any file may hold any class: the workers never read its files for some classes only.
    assert datasets.data_files(flat, ["Kiwi 1"]) is None
    with_label = T.StructType([T.StructField("label", T.StringType()), *vectors.fields])
    assert rows_of(datasets.frame(flat, with_label)) == rows_of(
        datasets.read(flat).select("label", "features", "path")
    )

    # A table whose readers must apply deletion vectors (rows deleted inside a file, as other
    # Delta writers leave them): only Spark's reader knows which rows are live.
    path = datasets.spark_path(table)
    spark.sql(
        f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = true)"
    )
    assert datasets.data_files(table, labels) is None
    assert rows_of(datasets.frame(table, vectors, some)) == rows_of(by_workers)


def test_csv_lines_quote_what_needs_it_and_keep_every_float32():
    """Each line reads back (Python's csv) as its path, label and exactly its float32 values,
    sliced batches included; bad vectors fail with their cause."""
    import csv as csv_module

    import pyarrow as pa

    from fruits_assets.storage import csv_text

    paths = ["a.jpg", "with,comma.jpg", 'with "quotes".jpg', "line\nbreak.jpg", " spaced .jpg"]
    values = np.random.default_rng(5).normal(size=(5, 3)).astype(np.float32)
    values[0] = [1e-5, 3.0, -0.0]
    batch = pa.RecordBatch.from_pydict(
        {
            "path": paths,
            "label": ["2024", "Kiwi", "Kiwi", "Kiwi", 'Kiwi "gold"'],
            "pca_features": pa.array(values.tolist(), pa.list_(pa.float32())),
        }
    )
    format_lines = csv_text.lines("pca_features", 3)
    out = pa.Table.from_batches(list(format_lines(iter([batch, batch.slice(2, 2)]))))
    assert out.column_names == ["label", "path", "line"]
    rows = list(csv_module.reader(io.StringIO("\n".join(out.column("line").to_pylist()))))
    assert [r[0] for r in rows] == paths + paths[2:4]
    assert [r[1] for r in rows[:5]] == batch.column("label").to_pylist()
    read_back = np.array([r[2:] for r in rows], np.float32)
    np.testing.assert_array_equal(read_back, np.concatenate([values, values[2:4]]))
    no_values = csv_text.lines("pca_features", 0)(
        iter([pa.RecordBatch.from_pydict({"path": ["p"], "label": ["l"], "pca_features": [[]]})])
    )
    assert next(no_values).column("line").to_pylist() == ["p,l"]
    for vectors, cause in [
        ([[1.0, 2.0, 3.0], None], "feature vectors are null"),
        ([[1.0, 2.0, 3.0], [1.0, 2.0]], "of 2 to 3 values where 3 are expected"),
        ([[1.0, 2.0]], "of 2 values where 3 are expected"),
        ([[1.0, None, 3.0]], "missing values"),
    ]:
        bad = pa.RecordBatch.from_pydict(
            {
                "path": ["p"] * len(vectors),
                "label": ["l"] * len(vectors),
                "pca_features": pa.array(vectors, pa.list_(pa.float32())),
            }
        )
        with pytest.raises(ValueError, match=cause):
            next(format_lines(iter([bad])))


def test_csv_pieces_put_together_in_label_and_path_order(tmp_path, monkeypatch):
    """Tasks write their lines as they come; the file holds the header, then every line once,
    sorted by label then path (as bytes), whatever the tasks and batches that held them; a task
    that fails leaves no file; no rows: the header alone."""
    import csv as csv_module

    import pyarrow as pa

    from fruits_assets.storage import csv_text

    rng = np.random.default_rng(11)
    labels = ["Kiwi", "Apple 10", "apple", "Äpfel", "Kiwi", "Apple 10", "Kiwi", "Z,comma"]
    paths = [f"/in/{label}/{name}.jpg" for label, name in zip(labels, "hgfedcba", strict=True)]
    vectors = rng.normal(size=(len(paths), 2)).astype(np.float32)

    def batch(rows: list[int]) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict(
            {
                "path": [paths[i] for i in rows],
                "label": [labels[i] for i in rows],
                "pca_features": pa.array(vectors[rows].tolist(), pa.list_(pa.float32())),
            }
        )

    folder = str(tmp_path / "lines")
    write = csv_text.written("pca_features", 2, folder)
    # Three tasks: two with rows in two batches each (one batch a slice), one with none.
    tasks = [[batch([0, 1, 2]), batch([0, 3, 4]).slice(1)], [batch([5, 6]), batch([7])], []]
    manifest = [row for task in tasks for out in write(iter(task)) for row in out.to_pylist()]
    assert [row[csv_text.ROWS] for row in manifest] == [5, 3]
    monkeypatch.setattr(csv_text, "COPY_BYTES", 7)  # runs of lines copied in small pieces too
    target = str(tmp_path / "out" / "features.csv")
    pieces = [
        csv_text.Piece(row[csv_text.TEXT], row[csv_text.KEYS], row[csv_text.ROWS])
        for row in reversed(manifest)
    ]
    assert csv_text.merged(pieces, "path,label,pca_feature_1,pca_feature_2", target) == 8
    with open(target, newline="", encoding="utf-8") as handle:
        rows = list(csv_module.reader(handle))
    assert rows[0] == ["path", "label", "pca_feature_1", "pca_feature_2"]
    order = sorted(range(len(paths)), key=lambda i: (labels[i].encode(), paths[i].encode()))
    assert [(r[1], r[0]) for r in rows[1:]] == [(labels[i], paths[i]) for i in order]
    np.testing.assert_array_equal(np.array([r[2:] for r in rows[1:]], np.float32), vectors[order])
    # The same lines as each row's own line (`lines`), each ending with one line break.
    own = pa.Table.from_batches(list(csv_text.lines("pca_features", 2)(iter([batch(order)]))))
    expected = "".join(f"{line}\n" for line in own.column("line").to_pylist())
    header = "path,label,pca_feature_1,pca_feature_2\n"
    assert Path(target).read_text(encoding="utf-8") == header + expected

    # Lines visited out of their files' order, with gaps: the same file again.
    shuffled = str(tmp_path / "shuffled")
    write = csv_text.written("pca_features", 2, shuffled)
    again = [
        row
        for out in write(iter([batch([7, 0, 3, 1]), batch([5, 2, 6, 4])]))
        for row in out.to_pylist()
    ]
    assert len(again) == 1
    again_target = str(tmp_path / "again.csv")
    piece = csv_text.Piece(again[0][csv_text.TEXT], again[0][csv_text.KEYS], 8)
    assert csv_text.merged([piece], "path,label,pca_feature_1,pca_feature_2", again_target) == 8
    assert Path(again_target).read_bytes() == Path(target).read_bytes()
    # A piece whose files hold other than what its task reported fails the merge.
    with open(piece.text, "ab") as cut:
        cut.write(b"stale")
    with pytest.raises(ValueError, match="where its task wrote 8 lines"):
        csv_text.merged([piece], "path,label", str(tmp_path / "stale.csv"))
    with pytest.raises(ValueError, match="where its task wrote 9 lines"):
        csv_text.merged([csv_text.Piece(piece.text, piece.keys, 9)], "h", str(tmp_path / "x.csv"))

    failing = str(tmp_path / "failing")
    bad = pa.RecordBatch.from_pydict(
        {"path": ["p"], "label": ["l"], "pca_features": pa.array([[1.0]], pa.list_(pa.float32()))}
    )
    with pytest.raises(ValueError, match="of 1 values where 2 are expected"):
        list(csv_text.written("pca_features", 2, failing)(iter([batch([0]), bad])))
    assert not os.listdir(failing)
    empty = str(tmp_path / "empty.csv")
    assert csv_text.merged([], "path,label", empty) == 0
    assert Path(empty).read_text() == "path,label\n"


@pytest.fixture
def moto_s3(monkeypatch) -> Iterator[str]:
    """moto's S3 server on loopback, the AWS environment pointed at it; its endpoint."""
    from fruits_assets_tests.emr_emulator import start_moto

    server, endpoint = start_moto()
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    try:
        yield endpoint
    finally:
        server.stop()


def test_csv_pieces_on_s3_are_put_together_as_on_disk(tmp_path, moto_s3):
    """Pieces written to S3 (moto's server) make the same file there as on local disk; a bad
    piece is named by its S3 address."""
    import boto3
    import pyarrow as pa

    from fruits_assets.storage import csv_text, filesystem

    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket="fruits")
    rows = {
        "path": [f"/in/{i % 3}/{i}.jpg" for i in range(10)],
        "label": [f"class {i % 3}" for i in range(10)],
        "pca_features": pa.array([[float(i), -i / 3] for i in range(10)], pa.list_(pa.float32())),
    }
    batches = [pa.RecordBatch.from_pydict(rows).slice(start, 5) for start in (0, 5)]
    made, written = {}, {}
    for place in ("s3://fruits/stage", str(tmp_path / "stage")):
        write = csv_text.written("pca_features", 2, filesystem.join(place, "lines"))
        written[place] = [
            csv_text.Piece(row[csv_text.TEXT], row[csv_text.KEYS], row[csv_text.ROWS])
            for part in batches
            for out in write(iter([part]))
            for row in out.to_pylist()
        ]
        target = filesystem.join(place, "features.csv")
        assert csv_text.merged(written[place], "path,label,a,b", target) == 10
        made[place] = filesystem.read_bytes(target)
    on_s3 = written["s3://fruits/stage"]
    assert [p.text[:24] for p in on_s3] == ["s3://fruits/stage/lines/"] * 2
    assert made["s3://fruits/stage"] == made[str(tmp_path / "stage")]
    assert made["s3://fruits/stage"].decode().splitlines()[1].startswith("/in/0/0.jpg,class 0,")
    wrong = csv_text.Piece(on_s3[0].text, on_s3[0].keys, 6)
    with pytest.raises(ValueError, match=r"^s3://fruits/stage/lines/.*where its task wrote 6"):
        csv_text.merged([wrong], "h", "s3://fruits/stage/bad.csv")


def test_s3_files_go_through_one_client_and_a_small_file_is_one_put(moto_s3, monkeypatch):
    """On moto's server: every file of one AWS environment shares one S3 client (its
    connections), a changed environment gets its own, and a small file is written with one PUT
    (no multipart upload, no folder marker objects), then read back whole."""
    import logging

    import boto3

    from fruits_assets.storage import filesystem

    class Requests(logging.Handler):
        lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    werkzeug, requests = logging.getLogger("werkzeug"), Requests()
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket="fruits")
    client = filesystem.Location.of("s3://fruits/a/1.bin").fs
    assert filesystem.Location.of("s3://fruits/b/2.bin").fs is client
    werkzeug.addHandler(requests)
    werkzeug.setLevel(logging.INFO)  # one line per request
    try:
        filesystem.write_bytes("s3://fruits/a/1.bin", b"x" * 1000)
        assert filesystem.read_bytes("s3://fruits/a/1.bin") == b"x" * 1000
    finally:
        werkzeug.removeHandler(requests)
        werkzeug.setLevel(logging.WARNING)  # as `start_moto` sets it
    calls = [
        f"{method} {path}"
        for line in requests.lines
        for method in ["".join(c for c in line.split('"')[1].split()[0] if c.isupper())]
        for path in [line.split(" /", 1)[1].split(" ")[0]]
    ]
    # No folder markers, no multipart upload: one PUT, then the read (HEAD, ranged GETs).
    assert calls[:2] == ["PUT fruits/a/1.bin", "HEAD fruits/a/1.bin"], calls
    assert set(calls[2:]) == {"GET fruits/a/1.bin"}, calls
    # Opened at its first write, a file still fails where it cannot be written: at close.
    with pytest.raises(OSError, match="NoSuchBucket|NO_SUCH_BUCKET|does not exist"):
        filesystem.write_bytes("s3://no-such-bucket/a/1.bin", b"x")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert filesystem.Location.of("s3://fruits/a/1.bin").fs is not client


def test_decode_task_on_s3_reads_photos_side_by_side_and_keeps_each_outcome(moto_s3, monkeypatch):
    """The decode's task over photos on S3 (moto's server), which it reads several at once:
    every good photo written back with its own bytes under its own path, every bad one
    rejected with its reason (a file too large without being read), none lost or swapped."""
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fruits_assets.storage import class_files, filesystem
    from fruits_assets_tests.images import noisy_jpeg

    s3 = boto3.client("s3", endpoint_url=moto_s3)
    s3.create_bucket(Bucket="fruits")
    photos = {}
    for i in range(40):  # more than the reads in flight
        label = f"class {i % 3}"
        body = noisy_jpeg((i * 6, 255 - i * 6, 90))
        body = body[: len(body) // 2] if i % 7 == 0 else body  # truncated
        photos[f"s3://fruits/in/{label}/{i}.jpg"] = (label, body)
        s3.put_object(Bucket="fruits", Key=f"in/{label}/{i}.jpg", Body=body)
    too_big = "s3://fruits/in/class 1/big.jpg"
    monkeypatch.setattr(decoding, "MAX_FILE_BYTES", max(len(b) for _, b in photos.values()))
    photos[too_big] = ("class 1", b"\xff" * (decoding.MAX_FILE_BYTES + 1))
    s3.put_object(Bucket="fruits", Key="in/class 1/big.jpg", Body=photos[too_big][1])

    class Listing:
        def map_in_arrow(self, task, schema):
            self.task = task

    listing = Listing()
    decoding.decoded_files(listing, "s3://fruits/out/accepted", "s3://fruits/out/rejected")
    paths = list(photos)
    batches = [
        pa.record_batch(
            {"path": paths[i : i + 16], "label": [photos[p][0] for p in paths[i : i + 16]]}
        )
        for i in range(0, len(paths), 16)
    ]
    files = [row for out in listing.task(iter(batches)) for row in out.to_pylist()]
    kept, rejected = {}, {}
    for row in files:
        folder = "rejected" if row[decoding.REJECTIONS] else "accepted"
        where = filesystem.Location.of(f"s3://fruits/out/{folder}/{row[class_files.FILE]}")
        for r in pq.read_table(where.path, filesystem=where.fs).to_pylist():
            if folder == "accepted":
                kept[r["path"]] = r["content"]
            else:
                rejected[r["path"]] = r["reason"]
    broken = {p for i, p in enumerate(photos) if i % 7 == 0 and p != too_big}
    assert kept == {p: body for p, (_, body) in photos.items() if p not in broken | {too_big}}
    assert set(rejected) == broken | {too_big}
    assert rejected.pop(too_big).startswith(decoding.REJECT_TOO_BIG_FILE)
    assert all(reason.startswith(decoding.REJECT_CORRUPT) for reason in rejected.values())


def test_scree_plot_is_a_png():
    assert plots.scree_png([0.6, 0.3, 0.1], 0.99, 3).startswith(b"\x89PNG")


def test_contiguous_ranges_follow_instance_order():
    keys = ["a", "b", "c", "d", "e"]
    assert partitions.contiguous_ranges(keys, {"a", "b", "c", "d", "e"}) == [("a", "e")]
    assert partitions.contiguous_ranges(keys, {"b", "d", "e"}) == [("b", "b"), ("d", "e")]


def test_sync_requests_add_new_and_drop_stale():
    assert partitions.sync_requests(["x", "a"], ["a", "b"]) == (["b"], ["x"])


def test_partition_dir_name_escapes_like_spark():
    assert layout.partition_dir_name("Apple Golden 2") == "label=Apple Golden 2"
    assert layout.partition_dir_name("Kiwi [bio] #1") == "label=Kiwi %5Bbio%5D %231"


def test_predict_without_a_trained_model_is_a_clear_error(tmp_path):
    done = fruits("predict", "x.jpg", "--model", str(tmp_path), home=tmp_path / "home")
    assert done.returncode == 2 and "No trained classifier" in done.stderr


def test_metrics_helpers():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    truth = np.array([0, 1, 1])
    assert training.top_k_accuracy(p, truth, 1) == 1 / 3
    assert training.top_k_accuracy(p, truth, 2) == 1.0
    recall = training.per_class_recall(p.argmax(1), truth, 3)
    assert recall[0] == 1.0 and recall[1] == 0.0 and np.isnan(recall[2])


def test_settings_precedence_file_env_and_what_emr_steps_receive(tmp_path, monkeypatch):
    """Defaults < fruits.toml < FRUITS_* < explicit values; machine-local settings stay home."""
    from fruits_assets.settings import FruitsSettings

    for name in FruitsSettings.model_fields:
        monkeypatch.delenv(FruitsSettings.env_name(name), raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fruits.toml").write_text(
        '[fruits]\nimages = "photos"\nvariance = 0.95\nweights = "w.h5"\n'
    )
    monkeypatch.setenv("FRUITS_VARIANCE", "0.9")
    settings = FruitsSettings.from_env(weights="random")
    assert settings.images == str(tmp_path / "photos")  # from the file, made absolute
    assert settings.variance == 0.9  # the environment over the file
    assert settings.weights == "random"  # explicit over both
    assert settings.model_fields_set >= {"images", "variance", "weights"}
    forwarded = settings.to_env(forwarded_only=True)
    assert forwarded["FRUITS_VARIANCE"] == "0.9" and "FRUITS_CACHE_DIR" not in forwarded
    assert "FRUITS_CACHE_DIR" in settings.to_env()
    (tmp_path / "fruits.toml").write_text("[fruits]\nimagez = 'typo'\n")
    with pytest.raises(ValueError, match="unknown settings \\['imagez'\\]"):
        FruitsSettings.from_env()


def test_scan_never_follows_links_and_reports_each_with_its_reason(tmp_path):
    root = tmp_path / "root"
    kiwi = root / "Kiwi"
    kiwi.mkdir(parents=True)
    (kiwi / "a.jpg").write_bytes(noisy_jpeg())
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(noisy_jpeg())
    (kiwi / "loop").symlink_to(root, target_is_directory=True)
    (kiwi / "out.jpg").symlink_to(outside)
    (kiwi / "twice.jpg").symlink_to(kiwi / "a.jpg")
    (kiwi / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    long_class = root / ("Kiwi " + "#" * 100)
    long_class.mkdir()
    (long_class / "b.jpg").write_bytes(noisy_jpeg())
    undecodable = os.fsencode(kiwi) + b"/caf\xe9.jpg"
    with open(undecodable, "wb") as handle:
        handle.write(noisy_jpeg())
    scan = discovery.scan(str(root))
    assert [i.path for i in scan.images] == [str(kiwi / "a.jpg")]
    reasons = {path.rsplit("/", 1)[-1]: reason for path, reason in scan.ignored}
    assert reasons["loop"].startswith(discovery.IGNORED_LINK_INSIDE)
    assert reasons["out.jpg"] == f"{discovery.IGNORED_LINK_OUT} -> {outside}"
    assert reasons["twice.jpg"] == f"{discovery.IGNORED_LINK_INSIDE} -> Kiwi/a.jpg"
    assert reasons["broken.jpg"] == discovery.IGNORED_LINK_BROKEN
    assert reasons["b.jpg"] == discovery.IGNORED_LONG_CLASS
    assert reasons["caf\ufffd.jpg"] == discovery.IGNORED_NOT_UTF8


def _placed(rows, schema: str) -> list:
    """The rows a `mapInArrow` over `rows` (`table_files.Rows`) receives, each with its task's
    `split`."""
    from pyspark.sql import functions as F

    def same(batches):
        yield from batches

    frame = rows.map_in_arrow(same, schema)
    return frame.select("*", F.spark_partition_id().alias("split")).collect()


@pytest.mark.parametrize("reader", ["workers", "spark"])
def test_a_table_holds_a_file_per_class_and_a_small_rerun_uses_every_core(tmp_path, reader):
    """Rows the driver publishes land in one file per class; reading back one class for
    expensive per-row work gives every core its share, each row once: read by the Python
    workers from the table's files, or, for a table whose files may hold deleted rows, by
    Spark."""
    from deltalake import DeltaTable

    from fruits_assets.resources.storage import FruitsStorage
    from fruits_assets.storage import datasets as datasets_module
    from fruits_assets.storage.datasets import Datasets

    spark = local_spark()
    storage = FruitsStorage(images_root=str(tmp_path / "in"), output_root=str(tmp_path / "out"))
    datasets = Datasets(spark, storage, "run-1")
    rows = [(f"/p/{label}/{i}.jpg", label, i) for label in "abc" for i in range(200)]
    df = spark.createDataFrame(rows, "path string, label string, n int")
    publish_rows(datasets, df, "t", {"a", "b", "c"})
    files = DeltaTable(datasets.location("t")).file_uris()
    assert sorted(f.split("/")[-2] for f in files) == ["label=a", "label=b", "label=c"]
    if reader == "spark":
        path = datasets.spark_path("t")
        spark.sql(
            f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = true)"
        )
    assert (datasets.data_files("t", {"b"}) is None) == (reader == "spark")

    slots = spark.sparkContext.defaultParallelism
    for fresh in (False, True):  # the files this process published, then as the log lists them
        if fresh:
            datasets_module._FACTS.clear()
        with datasets.spread("t", {"b"}, ["n", "path", "label"]) as one_class:
            placed = _placed(one_class, "n int, path string, label string")
        assert sorted(r["n"] for r in placed) == list(range(200))
        assert {r["label"] for r in placed} == {"b"}
        per_split = Counter(r["split"] for r in placed)
        assert len(per_split) == slots and min(per_split.values()) > 200 / slots / 2


def test_on_a_large_cluster_each_class_takes_a_few_splits_not_one_per_core():
    """Many classes on many task slots, though fewer than the splits: each class's rows go to
    a few splits (so its photos take a few files, not one per core), every split has some,
    and a path is in one split only."""
    from pyspark.sql import functions as F

    from fruits_assets.storage.datasets import split_by_class

    spark = local_spark()
    classes, slots = 40, 16  # 64 splits
    rows = spark.createDataFrame(
        [(f"/p/{c}/{i}.jpg", f"class {c}") for c in range(classes) for i in range(30)],
        "path string, label string",
    )
    split = split_by_class(rows, classes, slots)
    assert split.rdd.getNumPartitions() == 4 * slots
    placed = split.select("path", "label", F.spark_partition_id().alias("split")).collect()
    per_class = Counter(label for label, _ in {(r["label"], r["split"]) for r in placed})
    assert max(per_class.values()) <= 2  # 64 splits / 40 classes: 2 pieces each
    assert len({r["split"] for r in placed}) > 2 * slots
    assert len({r["path"] for r in placed}) == len(placed) == classes * 30
    # A few classes: split by path, one split per slot, each with about its share.
    few = split_by_class(rows.where("label IN ('class 1', 'class 2')"), 2, slots)
    assert few.rdd.getNumPartitions() == slots


def test_workers_reading_a_tables_files_share_them_as_spark_would_split_the_rows():
    """The tasks whose workers read a table's files themselves: whole files in equal numbers
    for many files, a piece of every file per slot for a few, and a few pieces of each in
    between; every file's pieces cover it once, and no task is empty."""
    from fruits_assets.storage.table_files import DataFile, shares_per_task

    def files(count: int) -> list[DataFile]:
        return [DataFile(f"/t/label=c{c}/part-0.parquet", f"c{c}") for c in range(count)]

    def pieces(tasks) -> dict[DataFile, list[tuple[int, int]]]:
        found: dict[DataFile, list[tuple[int, int]]] = {}
        for task in tasks:
            for share in task:
                found.setdefault(share.file, []).append((share.piece, share.pieces))
        return {file: sorted(p) for file, p in found.items()}

    full = shares_per_task(files(141), slots=2)  # a full run on 2 cores: 8 tasks
    assert len(full) == 8 and {len(task) for task in full} == {17, 18}
    assert [share.file for task in full for share in task] == files(141)
    assert set(map(tuple, pieces(full).values())) == {((0, 1),)}

    few = shares_per_task(files(2), slots=16)  # a rerun of 2 classes on 16 slots
    assert len(few) == 16 and all(len(task) == 2 for task in few)
    assert all(p == [(i, 16) for i in range(16)] for p in pieces(few).values())

    between = shares_per_task(files(40), slots=16)  # 64 tasks, 40 files: 2 pieces each
    assert len(between) == 64 and all(between)
    assert all(p == [(0, 2), (1, 2)] for p in pieces(between).values())
    assert len(pieces(between)) == 40


def test_files_one_step_cut_by_path_are_cut_again_evenly_by_the_next(tmp_path):
    """A small rerun on a large cluster: the decode cuts each class's listing into a piece per
    slot, by a hash of the path, and writes a file per piece; the featurizer cuts those files
    again. Its pieces, hashed with another salt, each take some rows of every file: no task is
    left empty, and every path is read once. With the decode's own hash, half would be."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fruits_assets.storage.table_files import DataFile, shares_per_task, shares_read

    spark = local_spark()
    slots = 16

    def write(folder, label: str, paths: list[str]) -> DataFile:
        folder.mkdir(parents=True)
        table = pa.table({"path": paths, "label": [label] * len(paths)})
        pq.write_table(table, folder / "part.parquet")
        return DataFile(str(folder / "part.parquet"), label)

    def read(tasks, salt: str) -> list[list[str]]:
        rows = shares_read(spark, tasks, ["path", "label"], key="path", salt=salt)
        per_task = []
        for task in range(len([t for t in tasks if t])):
            ids = pa.record_batch([pa.array([task], pa.int64())], names=["id"])
            per_task.append([p for b in rows.read(iter([ids])) for p in b.column(0).to_pylist()])
        return per_task

    paths = {label: [f"/in/{label}/{i:04d}.jpg" for i in range(512)] for label in "ab"}
    listing = [write(tmp_path / "raw" / label, label, paths[label]) for label in "ab"]
    decoded = read(shares_per_task(listing, slots), salt="raw_images")
    assert len(decoded) == slots and sorted(p for t in decoded for p in t) == sorted(
        paths["a"] + paths["b"]
    )
    accepted = [
        write(
            tmp_path / "accepted" / f"{label}-{task}", label, [p for p in got if f"/{label}/" in p]
        )
        for task, got in enumerate(decoded)
        for label in "ab"
    ]
    tasks = shares_per_task(accepted, slots)
    assert len(tasks) == 4 * slots
    featurized = read(tasks, salt="accepted_images")
    assert min(len(t) for t in featurized) > 0
    assert sorted(p for t in featurized for p in t) == sorted(paths["a"] + paths["b"])
    assert sum(not t for t in read(tasks, salt="raw_images")) >= len(tasks) // 4


@pytest.mark.parametrize("reader", ["workers", "spark"])
def test_classes_are_split_for_featurizing_by_count_not_by_bytes(tmp_path, reader):
    """Classes whose rows weigh very different numbers of bytes (small and large photos) still
    reach the featurizer in splits of equal rows, each class in one split, whichever reads
    them."""
    from deltalake import DeltaTable

    from fruits_assets.resources.storage import FruitsStorage
    from fruits_assets.storage.datasets import Datasets

    spark = local_spark()
    storage = FruitsStorage(images_root=str(tmp_path / "in"), output_root=str(tmp_path / "out"))
    datasets = Datasets(spark, storage, "run-1")
    splits = spark.sparkContext.defaultParallelism * 4
    # Two classes per split: half of them with rows of 20 kB, half with rows of a few bytes.
    labels = [f"class {i:02d}" for i in range(2 * splits)]
    rows = [
        (f"/p/{label}/{n}.jpg", label, os.urandom(20_000 if i % 2 else 4))
        for i, label in enumerate(labels)
        for n in range(10)
    ]
    df = spark.createDataFrame(rows, "path string, label string, content binary")
    publish_rows(datasets, df, "t", set(labels))
    files = DeltaTable(datasets.location("t")).file_uris()
    assert sorted(f.split("/")[-2] for f in files) == [f"label={label}" for label in labels]
    if reader == "spark":
        path = datasets.spark_path("t")
        spark.sql(
            f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = true)"
        )
    with datasets.spread("t", labels, ["label", "content"]) as images:
        placed = _placed(images, "label string, content binary")
    rows_per_split = sorted(Counter(r["split"] for r in placed).values())
    assert rows_per_split == [20] * splits
    assert all(len({r["split"] for r in placed if r["label"] == label}) == 1 for label in labels)


def test_classes_are_selected_and_replaced_by_name_whatever_their_characters(tmp_path):
    """A class is selected (one SQL IN) and replaced (one commit) by its exact name: quotes,
    backslashes, accents, digits and spaces included; no class selects no row."""
    from fruits_assets.resources.storage import FruitsStorage
    from fruits_assets.storage.datasets import Datasets, labels_filter

    spark = local_spark()
    storage = FruitsStorage(images_root=str(tmp_path / "in"), output_root=str(tmp_path / "out"))
    datasets = Datasets(spark, storage, "run-1")
    names = ["O'Henry pear", "back\\slash", "Pomme ñ", "2024", 'say "kiwi"', "Kiwi 1"]
    rows = [(f"/p/{i}/{n}.jpg", name) for i, name in enumerate(names) for n in range(i + 1)]
    publish_rows(
        datasets, spark.createDataFrame(rows, "path string, label string"), "t", set(names)
    )
    for i, name in enumerate(names):
        assert [r["label"] for r in datasets.read("t", {name}).collect()] == [name] * (i + 1)
    assert datasets.read("t", set()).count() == 0
    assert datasets.read("t").where(labels_filter(names[:2])).count() == 1 + 2

    replaced = spark.createDataFrame([("/p/new.jpg", "O'Henry pear")], "path string, label string")
    publish_rows(datasets, replaced, "t", {"O'Henry pear"})
    table = {(r["path"], r["label"]) for r in datasets.read("t").collect()}
    assert table == {("/p/new.jpg", "O'Henry pear")} | {r for r in rows if r[1] != "O'Henry pear"}


def test_a_tables_facts_are_reused_until_its_next_commit(tmp_path):
    """What a step remembered of a table's latest commit is recalled until another commit,
    and never for a table deleted and written again from version 0."""
    import shutil as sh

    from fruits_assets.resources.storage import FruitsStorage
    from fruits_assets.storage.datasets import MAX_FACTS, Datasets

    spark = local_spark()
    storage = FruitsStorage(images_root=str(tmp_path / "in"), output_root=str(tmp_path / "out"))
    datasets = Datasets(spark, storage, "run-1")
    df = spark.createDataFrame([("/p/a/1.jpg", "a")], "path string, label string")
    assert datasets.recall("t", "rows") is None  # no table yet
    publish_rows(datasets, df, "t", {"a"})
    datasets.remember("t", "rows", 1)
    assert datasets.recall("t", "rows") == 1
    assert datasets.recall("t", "other fact") is None
    assert Datasets(spark, storage, "run-2").recall("t", "rows") == 1  # the next step's
    publish_rows(datasets, df, "t", {"a"})
    assert datasets.recall("t", "rows") is None
    sh.rmtree(datasets.location("t"))
    publish_rows(datasets, df, "t", {"a"})
    datasets.remember("t", "rows", 1)
    sh.rmtree(datasets.location("t"))
    publish_rows(datasets, df, "t", {"a"})
    assert datasets.version("t") == 0
    assert datasets.recall("t", "rows") is None
    for i in range(MAX_FACTS + 1):  # a bounded memory: the oldest facts go first
        datasets.remember("t", f"fact {i}", i)
    assert datasets.recall("t", "fact 0") is None
    assert datasets.recall("t", f"fact {MAX_FACTS}") == MAX_FACTS


def test_the_folders_split_only_when_every_class_has_both_sides():
    from fruits_assets.ml import splits

    def group(label: str, train: int, test: int, none: int = 0) -> dict:
        return {"label": label, "train": train, "test": test, "none": none}

    assert splits.folders_split([group("a", 3, 1), group("b", 2, 2)])
    # One class over two groups (two sets of weights): its sides add up.
    assert splits.folders_split([group("a", 3, 0), group("a", 0, 1)])
    assert not splits.folders_split([group("a", 3, 1), group("b", 2, 0)])
    assert not splits.folders_split([group("a", 3, 1, none=1)])
    assert splits.folders_split([])  # nothing to split: as the Spark job decides


def test_publishing_no_row_commits_only_where_a_class_had_rows(tmp_path):
    """No row for classes the table never held: no commit (the table already says it); no row
    for a class that has rows: a commit that removes them. Per-class counts come from what the
    publishing step remembered, else from the table."""
    from fruits_assets.resources.storage import FruitsStorage
    from fruits_assets.storage.datasets import ROWS_PER_CLASS, Datasets

    spark = local_spark()
    storage = FruitsStorage(images_root=str(tmp_path / "in"), output_root=str(tmp_path / "out"))
    datasets = Datasets(spark, storage, "run-1")
    schema = "path string, label string"
    rows = spark.createDataFrame([("/p/a/1.jpg", "a"), ("/p/a/2.jpg", "a")], schema)
    none = spark.createDataFrame([], schema)
    assert publish_rows(datasets, none, "t", {"a"}) == 0  # creates the table
    assert publish_rows(datasets, rows, "t", {"a"}) == 1
    assert publish_rows(datasets, none, "t", {"b"}) == 1  # never held b: no commit
    assert datasets.rows_per_class("t", {"a", "b"}) == {"a": 2, "b": 0}  # counted
    datasets.remember("t", ROWS_PER_CLASS, {"a": 7})
    assert datasets.rows_per_class("t", {"a"}) == {"a": 7}  # as remembered
    assert datasets.rows_per_class("t", {"a", "b"}) == {"a": 2, "b": 0}  # b not remembered
    assert publish_rows(datasets, none, "t", {"a", "b"}) == 2  # a had rows
    assert datasets.read("t").count() == 0
    assert datasets.rows_per_class("t", {"a"}) == {"a": 0}
    # A checkpoint of the log every ten commits, as Spark's Delta writes them: readers replay
    # the commits since the last one, and Spark reads the table through it.
    for _ in range(8):
        publish_rows(datasets, rows, "t", {"a"})
    assert datasets.version("t") == 10
    log = tmp_path / "out" / "t" / "_delta_log"
    assert (log / f"{10:020d}.checkpoint.parquet").exists()
    assert datasets.read("t").count() == 2 and datasets.rows_per_class("t", {"a"}) == {"a": 2}


@pytest.mark.parametrize("folders", [False, True], ids=["all rows", "Training folders"])
def test_pca_training_moments_follow_the_feature_tables_changes(tmp_path, folders):
    """The PCA's moments, kept with a commit of mobilenet_features, are updated for exactly the
    classes rerun, added or dropped since (their training rows then and now), equal to
    computing them anew; a table rewritten or old rows gone computes them anew. The same for the
    table's rows per class, weights and split."""
    from fruits_assets.assets.current_features import (
        COUNTS,
        CurrentFeatures,
        _groups,
        _kept_groups,
    )
    from fruits_assets.assets.training_moments import training_moments
    from fruits_assets.resources.storage import FruitsStorage
    from fruits_assets.storage.datasets import Datasets, labels_filter

    spark = local_spark()
    storage = FruitsStorage(images_root=str(tmp_path / "in"), output_root=str(tmp_path / "out"))
    datasets = Datasets(spark, storage, "run-1")
    table = layout.MOBILENET_FEATURES
    rng = np.random.default_rng(3)

    def rows_of(label: str, n: int, offset: float) -> list[tuple]:
        x = _rank_deficient_features(n, 16) + offset + 0.1 * rng.normal(size=(n, 16))
        side = ["Training", "Test"] if folders else ["photos"]
        return [
            (f"/in/{side[i % len(side)]}/{label}/{i}.jpg", label, row.tolist(), "sha")
            for i, row in enumerate(x)
        ]

    schema = "path string, label string, features array<float>, weights_sha256 string"
    # Class names with spaces, as Fruits-360's: their folders' names are URL-encoded in the log.
    data = {f"{c} 1": rows_of(f"{c} 1", 12 + i, i) for i, c in enumerate("abcdefghij")}
    before = {f"{c} 1" for c in "abcdefghi"}
    after = {f"{c} 1" for c in "abcdfghij"}

    def publish(labels: set[str]) -> None:
        rows = [r for label in labels for r in data[label]]
        publish_rows(datasets, spark.createDataFrame(rows, schema), table, labels)

    class Log:
        lines: list[str] = []

        def info(self, line: str) -> None:
            self.lines.append(line)

        warning = info

    context = type("Context", (), {"log": Log()})()

    def fit(classes: set[str]) -> tuple[pca.Moments, str]:
        fit_rows = [r for label in sorted(classes) for r in data[label]]
        if folders:
            fit_rows = [r for r in fit_rows if "/Training/" in r[0]]
        x = np.array([r[2] for r in fit_rows], dtype=np.float32)
        x = x.astype(np.float64)  # as stored
        current = CurrentFeatures(
            read=lambda: datasets.read(table).where(labels_filter(classes)),
            classes=sorted(classes),
            stale=[],
            without_features=[],
            weights={"sha": set(classes)},
            rows=sum(len(data[label]) for label in classes),
            folders_split=folders,
            training_rows=len(x),
        )
        moments, _ = training_moments(context, datasets, current)
        assert moments.n == len(x)
        np.testing.assert_allclose(moments.mean, x.mean(axis=0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(moments.covariance(), np.cov(x, rowvar=False), atol=1e-8)
        return moments, context.log.lines[-1]

    def groups(spark_jobs: bool) -> None:
        """The table's groups kept across runs are those of one aggregate over it; `spark_jobs`:
        whether they took a Spark job (not when updated from a few files)."""
        group, rows = f"groups-{len(context.log.lines)}", datasets.read(table)
        spark.sparkContext.setJobGroup(group, "kept groups")
        kept = _kept_groups(datasets, rows)
        ran = spark.sparkContext.statusTracker().getJobIdsForGroup(group)
        spark.sparkContext.setJobGroup("other", "")
        assert bool(ran) == spark_jobs

        def key(g):  # a count of no row is null in Spark's sum, 0 in the update
            return sorted((k, str(0 if v is None and k in COUNTS else v)) for k, v in g.items())

        assert sorted(map(key, kept)) == sorted(map(key, _groups(datasets.read(table))))

    publish(set(data))
    groups(spark_jobs=True)
    line = fit(before)[1]
    assert "computed over every class (the workers read the classes' 9 data files)" in line
    # Class b rerun with other photos, class j registered, class e dropped: three classes.
    data["b 1"] = rows_of("b 1", 9, 5.0)
    publish({"b 1"})
    groups(spark_jobs=False)
    assert "updated from the kept ones for 3 changed classes" in fit(after)[1]
    assert "for 0 changed classes" in fit(after)[1]
    # Another rerun of b, then restored to the version before it (as `fruits restore` does):
    # b's previous file is added back, its new one taken out.
    original_b, data["b 1"] = data["b 1"], rows_of("b 1", 5, 1.0)
    publish({"b 1"})
    groups(spark_jobs=False)
    assert "updated from the kept ones for 1 changed classes" in fit(after)[1]
    data["b 1"] = original_b
    datasets.restore(table, datasets.version(table) - 1)
    groups(spark_jobs=False)
    assert "updated from the kept ones for 1 changed classes" in fit(after)[1]
    # A commit that rearranges files without changing data (its add names a file already
    # there): the log is not followed.
    log = tmp_path / "out" / table / "_delta_log"
    latest = max(int(p.stem) for p in log.glob("*.json"))
    live = next(
        json.loads(line)["add"]
        for line in (log / f"{latest:020d}.json").read_text().splitlines()
        if '"add"' in line
    )
    (log / f"{latest + 1:020d}.json").write_text(
        json.dumps({"commitInfo": {"operation": "COMPUTE STATS"}})
        + "\n"
        + json.dumps({"add": {**live, "dataChange": False}})
        + "\n"
    )
    groups(spark_jobs=True)
    assert "computed over every class" in fit(after)[1]
    # More than half of the classes changed: computed anew.
    publish({f"{c} 1" for c in "abcdefg"})
    groups(spark_jobs=True)
    assert "computed over every class" in fit(after)[1]
    # What was kept cut short (a run killed while writing it): computed anew.
    data["d 1"] = rows_of("d 1", 8, 3.0)
    publish({"d 1"})
    for kept in (layout.training_moments_path, layout.feature_groups_path):
        path = kept(str(tmp_path / "out"))
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
    groups(spark_jobs=True)
    assert "computed over every class" in fit(after)[1]
    # Old rows gone (a VACUUM): computed anew, still right.
    data["c 1"] = rows_of("c 1", 7, -2.0)
    publish({"c 1"})
    removed = [
        p for p in (tmp_path / "out" / table / "label=c 1").iterdir() if p.suffix == ".parquet"
    ]
    for path in sorted(removed, key=lambda p: p.stat().st_mtime)[:-1]:
        path.unlink()
    assert "could not be updated" in fit(after)[1]
    # The table deleted and written again from version 0: not the kept commit.
    shutil.rmtree(tmp_path / "out" / table / "_delta_log")
    shutil.rmtree(tmp_path / "out" / table / "label=a 1")
    publish(set(data))
    assert "computed over every class" in fit(after)[1]


def test_a_failed_check_leads_its_error_with_its_cause_in_one_line():
    """The label check counts and names a few classes (the full lists stay in its metadata);
    the step's error leads with each failed check's cause, where it has one."""
    from fruits_assets.assets import checks
    from fruits_assets.assets.publishing import _unpublished

    classes = [f"Class {i}" for i in range(10)]
    label_check = checks.labels_match(classes, {"Class 0", "Other"}, why_missing="featurize them")
    assert not label_check.passed
    assert label_check.metadata[checks.SUMMARY].value == (
        "9 of the input root's 10 classes have no rows (Class 1, Class 2, Class 3 and 6 more); "
        "featurize them; 1 label is not a class of the input root (Other)"
    )
    assert len(label_check.metadata["missing_classes"].value) == 9
    assert checks.SUMMARY not in checks.labels_match(classes, set(classes)).metadata
    rows_check = checks.result(checks.ROWS_MATCH_FEATURES, False, rows=1, features=2)
    failed = [checks.ROWS_MATCH_FEATURES, checks.LABELS_MATCH_CLASSES]
    assert _unpublished([rows_check, label_check], failed) == (
        f"check {checks.ROWS_MATCH_FEATURES} failed; check {checks.LABELS_MATCH_CLASSES} failed: "
        f"{label_check.metadata[checks.SUMMARY].value}. Nothing was published"
    )
    assert _unpublished([rows_check], failed[:1]) == (
        f"check {checks.ROWS_MATCH_FEATURES} failed, so nothing was published"
    )


def test_files_the_workers_write_are_published_by_one_commit_whatever_the_class_names(tmp_path):
    """Rows written by Spark's Python workers themselves (`class_files`), several files per
    class, then published by one Delta commit each: the first creates the table, the next
    replaces one class and empties another. Spark, the deltalake package and the log's file
    changes see exactly the published rows, whatever the characters of the class names. A table
    of other columns is refused and keeps its version; a publish of a whole table not split by
    class replaces every file, and its columns."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable
    from pyspark.sql import functions as F

    from fruits_assets.resources.storage import FruitsStorage
    from fruits_assets.storage import class_files
    from fruits_assets.storage.datasets import Datasets

    spark = local_spark()
    storage = FruitsStorage(images_root=str(tmp_path / "in"), output_root=str(tmp_path / "out"))
    names = ["it's", "50% off", "a:b=c", "café 1", "plain"]

    def staged(run: str, rows: list, columns: str, partitioned: bool = True):
        df = spark.createDataFrame(rows, f"path string, label string, {columns}").repartition(3)
        kept = [c.split()[0] for c in ("path string", columns.split(",")[0])]

        def write(folder: str):
            def task(batches):
                yield from class_files.written(
                    batches, folder, kept if partitioned else [*kept, "label"],
                    lambda batch: {"n": batch.num_rows}, ("n",), "path", partitioned,
                )  # fmt: skip

            return df.mapInArrow(task, class_files.manifest_schema(("n",)))

        return Datasets(spark, storage, run).stage_files(write, "t")

    def vectors(label: str, n: int, value: float) -> list:
        return [(f"/in/{label}/{i}.jpg", label, [value, float(i)]) for i in range(n)]

    schema = "path string, label string, v array<float>"
    table_schema = spark.createDataFrame([], schema).schema
    first = staged(
        "run-1", [row for name in names for row in vectors(name, 4, 1.0)], "v array<float>"
    )
    assert len(first.files) > len(names)  # rows of a class in several tasks' files
    totals = class_files.per_class(first.files, ("n",))
    assert {label: (t["rows"], t["distinct"], t["n"]) for label, t in totals.items()} == {
        name: (4, 4, 4) for name in names
    }
    datasets = Datasets(spark, storage, "run-1")
    assert datasets.publish_files(first, "t", set(names), table_schema) == 0
    assert not list((tmp_path / "out" / "_staging").rglob("*.parquet"))  # all moved
    commit_0 = datasets.commit("t")

    second = staged("run-2", vectors("it's", 6, 2.0), "v array<float>")
    datasets = Datasets(spark, storage, "run-2")
    assert datasets.publish_files(second, "t", {"it's", "50% off"}, table_schema) == 1
    expected = {name: 4 for name in names if name != "50% off"} | {"it's": 6}
    counted = datasets.read("t").groupBy("label").count().collect()
    assert {r["label"]: r["count"] for r in counted} == expected
    assert datasets.read("t", {"it's"}).where(F.col("v")[0] == 2.0).count() == 6
    readers = DeltaTable(datasets.location("t")).to_pandas()
    assert readers.groupby("label").size().to_dict() == expected
    out, put = datasets.file_changes("t", commit_0, datasets.commit("t"))
    assert set(put.values()) == {"it's"} and set(out.values()) == {"it's", "50% off"}
    # The steps after a publish read the files its commit added, as Parquet files.
    files = datasets.data_files("t", {"it's"})
    assert files and {f.label for f in files} == {"it's"}
    assert sum(pq.read_metadata(f.uri).num_rows for f in files) == 6
    assert datasets.history("t")[0]["run_id"] == "run-2"

    other = staged("run-3", vectors("plain", 2, 3.0), "w array<float>")
    other_schema = spark.createDataFrame([], "path string, label string, w array<float>").schema
    with pytest.raises(ValueError, match="holds the columns"):
        Datasets(spark, storage, "run-3").publish_files(other, "t", {"plain"}, other_schema)
    assert datasets.version("t") == 1
    assert list((tmp_path / "out" / "_staging" / "run-3").rglob("*.parquet"))  # kept aside

    whole = Datasets(spark, storage, "run-4")
    rows = [row for name in names for row in vectors(name, 3, 4.0)]
    for n, columns in enumerate(("v array<float>", "w array<float>")):
        staged_whole = staged("run-4", rows, columns, partitioned=False)
        assert {f["file"].count("/") for f in staged_whole.files} == {0}  # no class folders
        column = columns.split()[0]
        whole_schema = spark.createDataFrame(
            [], f"path string, label string, {column} array<float>"
        )
        assert whole.publish_files(staged_whole, "w", None, whole_schema.schema) == n
        table = whole.read("w")
        assert table.columns == ["path", "label", column] and table.count() == len(rows)


def test_a_task_that_fails_deletes_the_files_it_began(tmp_path):
    """A writing task that fails midway leaves no file for a retry or an inspection to meet."""
    import pyarrow as pa

    from fruits_assets.storage import class_files

    def batches():
        yield pa.RecordBatch.from_pydict({"path": ["/a/1.jpg", "/b/1.jpg"], "label": ["a", "b"]})
        raise RuntimeError("the featurizer failed")

    with pytest.raises(RuntimeError, match="featurizer failed"):
        list(class_files.written(batches(), str(tmp_path), ["path"], lambda b: {}, ()))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_task_writes_large_photos_in_row_groups_of_bounded_bytes(tmp_path):
    """Photos of several MB each are written a few at a time, not 4,096 at once: a task's
    memory stays bounded by bytes as well as rows, and every row is in the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fruits_assets.storage import class_files

    photo = os.urandom(4 << 20)
    per_batch, n_batches = 4, 12

    def batches():
        for b in range(n_batches):
            yield pa.RecordBatch.from_pydict(
                {
                    "path": [f"/a/{b}-{i}.jpg" for i in range(per_batch)],
                    "label": ["a"] * per_batch,
                    "content": [photo] * per_batch,
                }
            )

    (manifest,) = class_files.written(
        batches(), str(tmp_path), ["path", "content"], lambda b: {}, ()
    )
    (row,) = manifest.to_pylist()
    assert row["rows"] == per_batch * n_batches
    written = pq.ParquetFile(tmp_path / row["file"])
    assert written.metadata.num_rows == per_batch * n_batches
    groups = [written.metadata.row_group(i) for i in range(written.num_row_groups)]
    assert len(groups) > 1
    assert max(g.total_byte_size for g in groups) <= class_files.BUFFERED_BYTES + len(photo) * 4


# What a process reports once it has pinned itself to one CPU ("pin") or moved itself into a
# cgroup (the path of its cgroup.procs): its Spark master and the JVM's CPU count (which
# `java` inherits with the affinity and the cgroup).
_CORES_PROBE = """
import os, re, subprocess, sys
if sys.argv[1:] == ["pin"]:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
elif sys.argv[1:]:
    with open(sys.argv[1], "w") as procs:
        procs.write(str(os.getpid()))
from fruits_assets.resources.spark import local_spark_config
from fruits_assets.settings import FruitsSettings
java = subprocess.run(["java", "-XshowSettings:system", "-version"], capture_output=True, text=True)
found = re.search(r"Effective CPU Count: (\\d+)", java.stdout + java.stderr)
print(local_spark_config(FruitsSettings())["spark.master"], found and found.group(1))
"""


@contextlib.contextmanager
def _cpu_cgroup(quota_us: int, period_us: int = 100_000):
    """A new cgroup whose CPU quota is `quota_us` per `period_us` (v1's cpu controller or
    v2's cpu.max), removed afterwards; None where this machine does not let us make one."""
    import time
    import uuid
    from pathlib import Path

    name = f"fruits_test_{uuid.uuid4().hex[:8]}"
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    group, enabled = None, False
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            group = v1 / name
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(str(period_us))
            (group / "cpu.cfs_quota_us").write_text(str(quota_us))
        elif "cpu" in (v2 / "cgroup.controllers").read_text().split():
            if "cpu" not in (v2 / "cgroup.subtree_control").read_text().split():
                (v2 / "cgroup.subtree_control").write_text("+cpu")
                enabled = True
            group = v2 / name
            group.mkdir()
            (group / "cpu.max").write_text(f"{quota_us} {period_us}")
        made = group
    except OSError:
        made = None
    try:
        yield made
    finally:
        for _ in range(50):  # the probe's processes may take a moment to leave it
            try:
                if group is not None and group.exists():
                    group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        if enabled:
            with contextlib.suppress(OSError):
                (v2 / "cgroup.subtree_control").write_text("-cpu")


def test_local_spark_takes_the_cpus_its_process_may_use():
    """A process limited to one CPU by its cgroup's quota (a container's `--cpus 1`) or by its
    CPU affinity gets one Spark task slot, not the machine's two; the JVM, which reads the
    same cgroup, counts one CPU too."""
    from fruits_assets.resources.cores import available_cores, cgroup_cpu_limit

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs a machine with at least 2 CPUs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def probe(*args: str) -> list[str]:
        command = [sys.executable, "-c", _CORES_PROBE, *args]
        return subprocess.run(
            command, env=env, capture_output=True, text=True, check=True
        ).stdout.split()

    master, jvm = probe()
    assert master == f"local[{available_cores()}]"
    if cgroup_cpu_limit() is None:  # no quota here: the JVM counts the affinity, if anything
        assert jvm in (master[6:-1], "None")
    master, jvm = probe("pin")
    assert master == "local[1]" and jvm in ("1", "None")

    with _cpu_cgroup(quota_us=80_000) as group:  # 0.8 of a CPU: rounded up to one
        if group is None:
            pytest.skip("cannot create a cgroup with a CPU quota here (needs root and cgroupfs)")
        assert probe(str(group / "cgroup.procs")) == ["local[1]", "1"]


def _fake_proc(tmp_path, cgroup: str, *mounts: tuple[str, str, str, str]):
    """A /proc/self with `cgroup` as its cgroup file and `mounts` (root, mount point, type,
    super options) in its mountinfo, for `cgroup_cpu_limit(proc)`."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    lines = ["24 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw"]
    for number, (root, point, kind, options) in enumerate(mounts, 30):
        point = str(point).replace(" ", chr(92) + "040")
        lines.append(
            f"{number} 24 0:{number} {root} {point} rw,nosuid shared:9 - {kind} cg {options}"
        )
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
    (proc / "self" / "cgroup").write_text(cgroup)
    return str(proc)


def test_a_containers_cpu_limit_is_read_from_its_cgroup_and_the_parents(tmp_path):
    """cgroup v2 as a Kubernetes pod's container sees it: the smallest quota along the
    process's cgroup and its parents counts; "max" is no limit."""
    from fruits_assets.resources.cores import available_cores, cgroup_cpu_limit

    mount = tmp_path / "sys fs cgroup"
    proc = _fake_proc(tmp_path, "0::/kubepods/pod1/app\n", ("/kubepods", mount, "cgroup2", "rw"))
    (mount / "pod1" / "app").mkdir(parents=True)
    (mount / "cpu.max").write_text("max 100000\n")
    (mount / "pod1" / "app" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(proc) is None
    (mount / "pod1" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(proc) == 1.5
    assert available_cores(proc) == min(2, len(os.sched_getaffinity(0)))
    (mount / "pod1" / "app" / "cpu.max").write_text("50000 100000\n")
    assert cgroup_cpu_limit(proc) == 0.5
    assert available_cores(proc) == 1


def test_a_cpu_limit_is_read_from_cgroup_v1_and_from_a_hybrid_hierarchy(tmp_path):
    """cgroup v1 as Docker shows it (the container's cgroup as the mount's root, cpu and
    cpuacct mounted together), beside a v2 hierarchy without a quota; a mount of another part
    of the tree (a sibling's cgroup) does not count."""
    from fruits_assets.resources.cores import cgroup_cpu_limit

    cpu, unified, sibling = tmp_path / "cpu,cpuacct", tmp_path / "unified", tmp_path / "sibling"
    for folder in (cpu, unified, sibling):
        folder.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("250000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (unified / "cpu.max").write_text("max 100000\n")
    (sibling / "cpu.cfs_quota_us").write_text("10000\n")
    (sibling / "cpu.cfs_period_us").write_text("100000\n")
    proc = _fake_proc(
        tmp_path,
        "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n0::/docker/abc\n",
        ("/docker/abc", cpu, "cgroup", "rw,cpu,cpuacct"),
        ("/docker/abc", unified, "cgroup2", "rw"),
        ("/docker/other", sibling, "cgroup", "rw,cpuacct,cpu"),
    )
    assert cgroup_cpu_limit(proc) == 2.5
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(proc) is None
