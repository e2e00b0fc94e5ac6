"""Code shared by the AIMA backend and the AIMA worker: configuration, schema, queue helpers."""

__version__ = "1.0.0"
