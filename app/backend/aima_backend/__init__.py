"""AIMA backend: HTTP API, web page, and the job outbox."""
