"""The daemon: service loop, config, checkpoints, metrics, HTTP endpoints, wire format; app.py wires them."""
