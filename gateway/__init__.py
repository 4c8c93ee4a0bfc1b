"""smsgw: an asynchronous SMS gateway on Trio."""

__version__ = "0.1.0"
