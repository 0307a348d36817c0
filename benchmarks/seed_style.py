"""A faithful re-implementation of the reference notebook's featurization, PCA and Parquet write.

binaryFile -> label from the folder -> repartition(20) -> SCALAR_ITER pandas UDF that rebuilds
MobileNetV2 from broadcast weights in every task and calls `model.predict` on each Arrow batch,
PIL resize to 224 -> PCA(k) -> vector_to_array UDF -> Parquet. Only the weights' origin differs
(a local .h5 instead of Keras's download), so the same weights serve every variant.
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pandas as pd


def seed_session(cores: int):
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # workers must see TensorFlow too
    return (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("seed_style")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )


def featurize(spark, images_root: str, weights_path: str):
    """The notebook's section 5-7: returns the features DataFrame (path, label, features)."""
    from pyspark.sql.functions import PandasUDFType, col, element_at, pandas_udf, split
    from tensorflow.keras import Model
    from tensorflow.keras.applications.mobilenet_v2 import MobileNetV2

    images = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", "*.jpg")
        .option("recursiveFileLookup", "true")
        .load(images_root)
    )
    images = images.withColumn("label", element_at(split(images["path"], "/"), -2))

    model = MobileNetV2(weights=weights_path, include_top=True, input_shape=(224, 224, 3))
    new_model = Model(inputs=model.input, outputs=model.layers[-2].output)
    broadcast_weights = spark.sparkContext.broadcast(new_model.get_weights())

    def model_fn():
        model = MobileNetV2(weights=None, include_top=True, input_shape=(224, 224, 3))
        for layer in model.layers:
            layer.trainable = False
        new_model = Model(inputs=model.input, outputs=model.layers[-2].output)
        new_model.set_weights(broadcast_weights.value)
        return new_model

    def preprocess(content):
        from PIL import Image
        from tensorflow.keras.applications.mobilenet_v2 import preprocess_input
        from tensorflow.keras.preprocessing.image import img_to_array

        img = Image.open(io.BytesIO(content)).resize([224, 224])
        arr = img_to_array(img)
        return preprocess_input(arr)

    def featurize_series(model, content_series):
        input = np.stack(content_series.map(preprocess))
        preds = model.predict(input, verbose=0)
        output = [p.flatten() for p in preds]
        return pd.Series(output)

    @pandas_udf("array<float>", PandasUDFType.SCALAR_ITER)
    def featurize_udf(content_series_iter):
        model = model_fn()
        for content_series in content_series_iter:
            yield featurize_series(model, content_series)

    return images.repartition(20).select(
        col("path"), col("label"), featurize_udf("content").alias("features")
    )


def pca_and_write(features_df, k: int, output: str) -> None:
    """The notebook's sections 8-9: PCA(k), vector_to_array UDF, Parquet."""
    from pyspark.ml.feature import PCA
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql.functions import udf
    from pyspark.sql.types import ArrayType, FloatType

    to_vector = udf(lambda a: Vectors.dense(a), VectorUDT())
    features_df = features_df.withColumn("features_vector", to_vector("features"))
    pca = PCA(k=k, inputCol="features_vector", outputCol="vectorized_pca_features")
    model = pca.fit(features_df)
    pca_df = model.transform(features_df).select("path", "label", "vectorized_pca_features")
    vector_to_array_udf = udf(lambda v: v.toArray().tolist(), ArrayType(FloatType()))
    final_df = pca_df.withColumn("pca_features", vector_to_array_udf("vectorized_pca_features"))
    final_df.select("path", "label", "pca_features").write.mode("overwrite").parquet(output)


if __name__ == "__main__":
    # python benchmarks/seed_style.py IMAGES WEIGHTS K OUTPUT: the notebook's whole script.
    images_root, weights_path, k, output = sys.argv[1:5]
    from fruits_assets.resources.cores import available_cores  # local[N] as `fruits` sizes it

    session = seed_session(available_cores())
    pca_and_write(featurize(session, images_root, weights_path), int(k), output)
