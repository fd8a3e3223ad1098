"""The DMA side: a client library (and later the ``ndmp`` command) that drives NDMP servers."""
