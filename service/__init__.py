"""The HTTP service: API, decision serving, model hot swap, health and metrics."""
