"""OCI images by reference: what a preheat of ``oci://REGISTRY/REPO:TAG`` downloads.

``reference``, ``auth`` and ``manifest`` are pure (text in, values out);
``registry`` does the HTTP: the token dance, manifest (index) resolution and
the list of blob URLs.
"""

from dffs.oci.reference import ImageReference

__all__ = ["ImageReference"]
