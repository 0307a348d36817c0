#!/usr/bin/env bash
# Fetch the jars local Spark needs beside the pyspark wheel, into a cache folder (never into the
# repository): Delta Lake (every output table is a Delta table), and Hadoop's S3A connector with
# the AWS SDK bundle it was built against (for s3:// data), matching the pinned pyspark; and a local
# file system for Hadoop that starts no process per file.
set -euo pipefail
cd "$(dirname "$0")/.."
JARS_DIR="${FRUITS_JARS_DIR:-$HOME/.cache/fruits_assets/jars}"
PYSPARK_JARS="$(.venv/bin/python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
HADOOP_VERSION="$(ls "$PYSPARK_JARS" | sed -n 's/^hadoop-client-api-\(.*\)\.jar$/\1/p')"
SCALA_VERSION="$(ls "$PYSPARK_JARS" | sed -n 's/^scala-library-\([0-9]*\.[0-9]*\)\..*\.jar$/\1/p')"
DELTA_VERSION="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("delta-spark"))')"
# hadoop-aws declares the SDK bundle it was compiled and tested with; keep the pair in step.
case "$HADOOP_VERSION" in
  3.3.4) SDK_VERSION=1.12.262 ;;
  3.3.6) SDK_VERSION=1.12.367 ;;
  *) echo "no known aws-java-sdk-bundle for Hadoop $HADOOP_VERSION: add it here" >&2; exit 1 ;;
esac
# Hadoop's local file system with permissions set through Java's file API, not a `chmod` process
# per file (no native Hadoop library in the pyspark wheel); built against Hadoop 3.3.4.
LOCAL_FS_VERSION=0.1.0
mkdir -p "$JARS_DIR"
for artifact in \
  "io.delta:delta-spark_$SCALA_VERSION:$DELTA_VERSION" \
  "io.delta:delta-storage:$DELTA_VERSION" \
  "org.apache.hadoop:hadoop-aws:$HADOOP_VERSION" \
  "com.amazonaws:aws-java-sdk-bundle:$SDK_VERSION" \
  "com.globalmentor:hadoop-bare-naked-local-fs:$LOCAL_FS_VERSION"; do
  name="$(echo "$artifact" | cut -d: -f2)-$(echo "$artifact" | cut -d: -f3).jar"
  if [ -s "$JARS_DIR/$name" ]; then continue; fi
  command -v mvn >/dev/null || { echo "Maven (mvn) is needed to fetch $artifact" >&2; exit 1; }
  echo "fetching $artifact into $JARS_DIR"
  mvn --batch-mode --quiet dependency:copy -Dartifact="$artifact" -DoutputDirectory="$JARS_DIR" \
    -Dmdep.overWriteIfNewer=true
done
