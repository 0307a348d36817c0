"""The storage resource: the input root of images and the output root of every asset."""

from __future__ import annotations

import dagster as dg

from fruits_assets.storage import filesystem


class FruitsStorage(dg.ConfigurableResource):
    """Where images are read from and where each asset writes `<output_root>/<asset name>/`."""

    images_root: str
    output_root: str
    # EMR reads s3:// natively through EMRFS; local Spark needs Hadoop's S3A (s3a://).
    native_s3: bool = False

    @property
    def images(self) -> str:
        return filesystem.normalize_uri(self.images_root)

    @property
    def output(self) -> str:
        return filesystem.normalize_uri(self.output_root)

    def spark_path(self, uri: str) -> str:
        return filesystem.spark_uri(uri, native_s3=self.native_s3)
