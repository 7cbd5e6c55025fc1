-- The MLflow database beside Dagster's (POSTGRES_DB); both owned by the platform role. Runs once, on an empty volume.
CREATE DATABASE mlflow OWNER platform;
