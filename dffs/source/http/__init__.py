"""HTTP/1.1 origins over trio: h11 heads, zero-copy bodies, keep-alive, retries."""

from dffs.source.http.source import HttpOptions, HttpSource

__all__ = ["HttpOptions", "HttpSource"]
