"""The REST front end (FastAPI on uvicorn): predictions on request, a lookup of every prediction, model downloads,
uploads into the landing zone, retrain requests through Dagster's GraphQL API, and Prometheus metrics. It stands on
ml_platform.serve, the Kafka scorer's core: one request contract, one cleaning function, one champion watcher.

  settings.py   what the API is pointed at, read from the environment once (`ApiSettings.from_env`)
  platform.py   the running parts: a warm SparkSession, per dataset its watchers and request coalescer, the Kafka
                producer of the prediction log, the prediction store, the MLflow tracker
  app.py        `create_app(settings)`: the FastAPI application and its routes
  guard.py      API keys (hashes only), body and row limits, the per-key rate limit
  batch.py      CSV batch predictions: small files answered at once, large ones as jobs
  runs.py       retrain requests and run status through Dagster's GraphQL client
  metrics.py    the Prometheus metrics the API exposes
"""
