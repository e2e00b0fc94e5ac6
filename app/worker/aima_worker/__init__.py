"""AIMA worker: a Redis Streams consumer that analyses uploaded media on a GPU or the CPU."""
