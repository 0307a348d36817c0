#!/usr/bin/env bash
# Fetch Hadoop's S3A connector and the AWS SDK bundle it was built against, matching the Hadoop
# inside the pinned pyspark, into a cache folder (never into the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
JARS_DIR="${FRUITS_JARS_DIR:-$HOME/.cache/fruits_assets/jars}"
PYSPARK_JARS="$(.venv/bin/python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
HADOOP_VERSION="$(ls "$PYSPARK_JARS" | sed -n 's/^hadoop-client-api-\(.*\)\.jar$/\1/p')"
# hadoop-aws declares the SDK bundle it was compiled and tested with; keep the pair in step.
case "$HADOOP_VERSION" in
  3.3.4) SDK_VERSION=1.12.262 ;;
  3.3.6) SDK_VERSION=1.12.367 ;;
  *) echo "no known aws-java-sdk-bundle for Hadoop $HADOOP_VERSION: add it here" >&2; exit 1 ;;
esac
mkdir -p "$JARS_DIR"
for artifact in "org.apache.hadoop:hadoop-aws:$HADOOP_VERSION" "com.amazonaws:aws-java-sdk-bundle:$SDK_VERSION"; do
  name="$(echo "$artifact" | cut -d: -f2)-$(echo "$artifact" | cut -d: -f3).jar"
  if [ -s "$JARS_DIR/$name" ]; then continue; fi
  command -v mvn >/dev/null || { echo "Maven (mvn) is needed to fetch $artifact" >&2; exit 1; }
  echo "fetching $artifact into $JARS_DIR"
  mvn --batch-mode --quiet dependency:copy -Dartifact="$artifact" -DoutputDirectory="$JARS_DIR" \
    -Dmdep.overWriteIfNewer=true
done
