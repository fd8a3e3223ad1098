"""Replica volumes: read-only copies of another volume, each update switched in whole.

``state`` is the metadata file (outside the store: a hostile stream cannot reach it), ``store``
the subvolumes beside the volume and the atomic switch, ``checks`` what a stream must satisfy
before anything is written. The modules know no NDMP; ``data/replica_jobs.py`` joins them to it.
"""
