"""ndmpd: an NDMP v2/v3/v4 server for Linux."""

__version__ = "0.1.0"
