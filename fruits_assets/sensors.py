"""A sensor that registers new fruit-class folders as partitions and materializes them."""

import dagster as dg

from fruits_assets.assets import PER_CLASS_ASSETS
from fruits_assets.partitions import (
    FRUIT_CLASS_PARTITIONS_NAME,
    fruit_class_partitions,
    sync_requests,
)
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import discovery


@dg.sensor(
    asset_selection=dg.AssetSelection.assets(*PER_CLASS_ASSETS),
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def fruit_class_sensor(context: dg.SensorEvaluationContext, storage: FruitsStorage):
    """Keep the partitions equal to the class folders under the input root; run the new ones."""
    discovered = discovery.scan(storage.images).classes
    registered = fruit_class_partitions.get_partition_keys(
        dynamic_partitions_store=context.instance
    )
    added, deleted = sync_requests(registered, discovered)
    if not added and not deleted:
        return dg.SkipReason(f"{len(discovered)} classes under {storage.images}, none new")
    requests = []
    if added:
        requests.append(fruit_class_partitions.build_add_request(added))
    if deleted:
        requests.append(fruit_class_partitions.build_delete_request(deleted))
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=key) for key in added],
        dynamic_partitions_requests=requests,
    )


__all__ = ["FRUIT_CLASS_PARTITIONS_NAME", "fruit_class_sensor"]
