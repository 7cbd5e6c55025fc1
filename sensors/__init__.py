"""Triggers: new batches in the landing zone (later: model quality)."""

from sensors.new_batch import build_new_batch_sensor

__all__ = ["build_new_batch_sensor"]
