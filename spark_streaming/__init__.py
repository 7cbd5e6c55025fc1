"""The streaming scorer (a plain spark-submit application). It imports ml_platform only."""
