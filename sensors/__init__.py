"""Triggers: new batches in the landing zone; live model quality from the scorer."""

from sensors.live_metrics import build_live_metrics_sensor
from sensors.new_batch import build_new_batch_sensor

__all__ = ["build_live_metrics_sensor", "build_new_batch_sensor"]
