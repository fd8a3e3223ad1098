"""The snapshot-dump engine: tree -> pax stream -> tree, with incrementals and file history.

It knows nothing of NDMP (no import of protocol or service code): the DATA service, the
``ndmpd dump``/``ndmpd restore`` commands and the tests all drive it the same way, with a
file descriptor for the stream and callbacks for history, progress and warnings.
"""
