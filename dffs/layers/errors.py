"""Errors of the layer readers.

Every one is a :class:`~dffs.errors.DffsError` with a one-line message naming the
layer (by digest when known) and what was wrong, because the snapshotter turns them
into an EIO with a logged cause, or into "unpack this layer normally".
"""

from __future__ import annotations

from dffs.errors import DffsError, DigestMismatch


class LayerError(DffsError):
    """Base class: something about a layer blob or its index is wrong."""


class LayerFormatError(LayerError):
    """The blob, the index or the table of contents is malformed, truncated or lies."""


class LayerDigestError(LayerError, DigestMismatch):
    """Bytes of a layer (a chunk, the TOC, the whole blob) do not match their digest."""


class NotLazy(LayerError):
    """A valid layer that cannot be read lazily (zstd, sparse files, hard links out of
    the layer...): the caller unpacks it normally instead."""


class IndexRequired(LayerError):
    """A gzip layer that is not eStargz needs a prebuilt index (see ``build_index``)."""
