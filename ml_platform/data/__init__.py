"""The data layers, raw -> bronze -> silver: which landed files become batches (landing), reading a CSV into
bronze (ingest), cleaning and typing rows with reasons for the rejected ones (cleaning), the checks that decide
whether a batch is accepted (checks), and the store-level jobs that run them for one batch (layers)."""
