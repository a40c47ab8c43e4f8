from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LayerFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LAYER_FORMAT_UNSPECIFIED: _ClassVar[LayerFormat]
    LAYER_FORMAT_TAR: _ClassVar[LayerFormat]
    LAYER_FORMAT_GZIP: _ClassVar[LayerFormat]
    LAYER_FORMAT_ESTARGZ: _ClassVar[LayerFormat]

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_KIND_UNSPECIFIED: _ClassVar[EntryKind]
    ENTRY_KIND_REG: _ClassVar[EntryKind]
    ENTRY_KIND_DIR: _ClassVar[EntryKind]
    ENTRY_KIND_SYMLINK: _ClassVar[EntryKind]
    ENTRY_KIND_HARDLINK: _ClassVar[EntryKind]
    ENTRY_KIND_CHAR: _ClassVar[EntryKind]
    ENTRY_KIND_BLOCK: _ClassVar[EntryKind]
    ENTRY_KIND_FIFO: _ClassVar[EntryKind]
LAYER_FORMAT_UNSPECIFIED: LayerFormat
LAYER_FORMAT_TAR: LayerFormat
LAYER_FORMAT_GZIP: LayerFormat
LAYER_FORMAT_ESTARGZ: LayerFormat
ENTRY_KIND_UNSPECIFIED: EntryKind
ENTRY_KIND_REG: EntryKind
ENTRY_KIND_DIR: EntryKind
ENTRY_KIND_SYMLINK: EntryKind
ENTRY_KIND_HARDLINK: EntryKind
ENTRY_KIND_CHAR: EntryKind
ENTRY_KIND_BLOCK: EntryKind
ENTRY_KIND_FIFO: EntryKind

class Xattr(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: bytes
    value: bytes
    def __init__(self, name: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("file_offset", "size", "blob_offset", "blob_end", "inner_offset", "digest")
    FILE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOB_OFFSET_FIELD_NUMBER: _ClassVar[int]
    BLOB_END_FIELD_NUMBER: _ClassVar[int]
    INNER_OFFSET_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    file_offset: int
    size: int
    blob_offset: int
    blob_end: int
    inner_offset: int
    digest: str
    def __init__(self, file_offset: _Optional[int] = ..., size: _Optional[int] = ..., blob_offset: _Optional[int] = ..., blob_end: _Optional[int] = ..., inner_offset: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("path", "kind", "mode", "uid", "gid", "size", "mtime", "link_target", "devmajor", "devminor", "xattrs", "offset", "chunks", "implied")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    LINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    DEVMAJOR_FIELD_NUMBER: _ClassVar[int]
    DEVMINOR_FIELD_NUMBER: _ClassVar[int]
    XATTRS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    IMPLIED_FIELD_NUMBER: _ClassVar[int]
    path: bytes
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    link_target: bytes
    devmajor: int
    devminor: int
    xattrs: _containers.RepeatedCompositeFieldContainer[Xattr]
    offset: int
    chunks: _containers.RepeatedCompositeFieldContainer[Chunk]
    implied: bool
    def __init__(self, path: _Optional[bytes] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., size: _Optional[int] = ..., mtime: _Optional[float] = ..., link_target: _Optional[bytes] = ..., devmajor: _Optional[int] = ..., devminor: _Optional[int] = ..., xattrs: _Optional[_Iterable[_Union[Xattr, _Mapping]]] = ..., offset: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[Chunk, _Mapping]]] = ..., implied: _Optional[bool] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("compressed_offset", "uncompressed_offset", "bits", "window")
    COMPRESSED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    UNCOMPRESSED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    compressed_offset: int
    uncompressed_offset: int
    bits: int
    window: bytes
    def __init__(self, compressed_offset: _Optional[int] = ..., uncompressed_offset: _Optional[int] = ..., bits: _Optional[int] = ..., window: _Optional[bytes] = ...) -> None: ...

class LayerIndex(_message.Message):
    __slots__ = ("blob_digest", "blob_size", "format", "tar_size", "entries", "checkpoint_spacing", "checkpoints")
    BLOB_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BLOB_SIZE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TAR_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SPACING_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    blob_digest: str
    blob_size: int
    format: LayerFormat
    tar_size: int
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    checkpoint_spacing: int
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, blob_digest: _Optional[str] = ..., blob_size: _Optional[int] = ..., format: _Optional[_Union[LayerFormat, str]] = ..., tar_size: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., checkpoint_spacing: _Optional[int] = ..., checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...
