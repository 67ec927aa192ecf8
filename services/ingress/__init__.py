"""The ingress service: the only HTTP listener."""
