"""What runs the platform on one machine: the `make run` supervisor (supervisor), the batch simulator (simulate)
and the load generator (loadgen)."""
