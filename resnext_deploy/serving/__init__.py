"""Serving: a Triton model repository, a PyTriton server on the CPU, and a load test of a running server."""
