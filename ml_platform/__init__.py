"""The domain core of ml-platform, free of Dagster: dataset specs (spec, specs/), store paths (layout), stores
(stores/), the data layers (data/), training (train/), serving (serve/), the local stack (local/), the Spark
work of each layer by name (jobs, emr_job), Spark sessions (spark) and the `ml-platform` command (cli)."""
