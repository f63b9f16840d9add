"""The seam between the gateway and whatever runs a model (a worker process, or a fake in tests)."""
