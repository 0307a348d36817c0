"""Automation: new class folders become partitions and flow through the graph, and the
all-classes assets follow when their per-class parents change."""

import dagster as dg

from fruits_assets.assets import ALL_ASSETS, ALL_CLASSES_ASSETS
from fruits_assets.partitions import fruit_class_partitions, range_tags, sync_requests
from fruits_assets.resources.storage import FruitsStorage
from fruits_assets.storage import discovery


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=dg.AssetSelection.assets(*ALL_ASSETS),
)
def fruit_class_sensor(context: dg.SensorEvaluationContext, storage: FruitsStorage):
    """Keep the partitions equal to the class folders under the input root. New classes: one
    run for the whole batch (their per-class assets, then every all-classes asset); classes
    gone: one run that rebuilds the all-classes assets without them."""
    try:
        discovered = discovery.scan(storage.images).classes
    except (FileNotFoundError, OSError) as exc:
        return dg.SkipReason(f"cannot list the input root: {exc}")
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
    batch = "+".join(added) + "-" + "-".join(deleted)
    if added:
        # Added keys go to the end of the partition order, in this order: one contiguous range.
        run = dg.RunRequest(
            run_key=f"classes:{batch}",
            asset_selection=[a.key for a in ALL_ASSETS],
            tags=range_tags(added[0], added[-1]),
        )
    else:
        run = dg.RunRequest(
            run_key=f"classes:{batch}", asset_selection=[a.key for a in ALL_CLASSES_ASSETS]
        )
    return dg.SensorResult(run_requests=[run], dynamic_partitions_requests=requests)


# When per-class assets are rerun from the UI (a partition or a few), the all-classes assets
# downstream follow once the whole batch is done.
downstream_automation = dg.AutomationConditionSensorDefinition(
    "all_classes_follow",
    target=dg.AssetSelection.assets(*ALL_CLASSES_ASSETS),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
