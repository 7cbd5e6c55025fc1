"""The message contracts as JSON Schema files, read by ml_platform.serve.messages."""
