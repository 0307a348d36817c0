"""fruits_assets: the Fruits! image pipeline as a Dagster asset graph on Spark."""
