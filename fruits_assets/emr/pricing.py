"""Cost estimates from the price table in prices.toml (instance-hours x on-demand price)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class ClusterPrice:
    """The hourly price of a whole cluster: EC2 plus the EMR uplift of each instance."""

    region: str
    instances: dict[str, int]  # instance type -> count
    per_hour: float
    source: str

    @property
    def instance_count(self) -> int:
        return sum(self.instances.values())

    def estimate(self, seconds: float) -> dict[str, float | str]:
        """Metadata for work that held the cluster for `seconds`."""
        fleet = " + ".join(f"{n} x {kind}" for kind, n in self.instances.items())
        return {
            "emr_cost_estimate_usd": round(self.per_hour * seconds / 3600, 4),
            "emr_instance_hours": round(self.instance_count * seconds / 3600, 4),
            "emr_price_basis": (
                f"{fleet} in {self.region} at ${self.per_hour:.3f}/h on demand "
                f"(EC2 + EMR; {self.source})"
            ),
        }


def cluster_price(region: str, instances: dict[str, int]) -> ClusterPrice | None:
    """The price of a cluster, or None when the table lacks one of its instance types."""
    # importlib.resources: on EMR this package runs from a zip (spark-submit --py-files).
    table = tomllib.loads(resources.files("fruits_assets.emr").joinpath("prices.toml").read_text())
    per_hour = 0.0
    for kind, count in instances.items():
        entry = table.get(region, {}).get(kind)
        if entry is None:
            return None
        per_hour += count * (float(entry["ec2"]) + float(entry["emr"]))
    return ClusterPrice(
        region=region,
        instances=dict(instances),
        per_hour=per_hour,
        source=f"{table['source']}, recorded {table['recorded']}",
    )
