"""The Dagster resource of local Spark: started on first use and warmed up in the background."""

from __future__ import annotations

import threading
from typing import Any

from dagster_pyspark import LazyPySparkResource

from fruits_assets.resources.spark import WARM_UP_THREAD, warm_up


class LocalSpark(LazyPySparkResource):
    """Local Spark, started on first use, then warmed up in the background (`warm_up`) while
    the first asset runs: runs launched by the UI get what `fruits run` gets. A run launched by
    `fruits ui` uses the UI's warm JVM instead of starting one (`spark_host`)."""

    def _init_session(self) -> None:
        if self._spark_session is None:
            import dagster as dg

            from fruits_assets.resources import spark_host
            from fruits_assets.resources.spark import started_session

            self._spark_session = spark_host.attach(self.spark_config)
            attached = self._spark_session is not None
            prepared = attached and spark_host.claimed_prepared()
            if prepared:
                dg.get_dagster_logger().info(
                    "Spark: the context the UI's warm JVM prepared (Python workers ready)"
                )
            elif attached:
                dg.get_dagster_logger().info("Spark: a context in the UI's warm JVM")
            else:
                # The session `fruits run` started while it set the run up, else a new one.
                self._spark_session = started_session(self.spark_config)
                if self._spark_session is None:
                    super()._init_session()
            # A context the UI's JVM prepared has its Python workers running already.
            threading.Thread(
                target=warm_up,
                args=(self._spark_session,),
                kwargs={"workers": not prepared},
                name=WARM_UP_THREAD,
                daemon=True,
            ).start()

    def teardown_after_execution(self, context: Any) -> None:
        from fruits_assets.resources import spark_host

        if self._spark_session is not None:
            spark_host.detach(self._spark_session)
