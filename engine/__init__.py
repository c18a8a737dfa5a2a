"""engine: a streaming audio session engine."""

__version__ = "0.1.0"
