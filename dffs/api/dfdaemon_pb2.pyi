import datetime

from dffs.api import common_pb2 as _common_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SyncPiecesRequest(_message.Message):
    __slots__ = ("host_id", "task_id", "interested_piece_numbers")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INTERESTED_PIECE_NUMBERS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    task_id: str
    interested_piece_numbers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, host_id: _Optional[str] = ..., task_id: _Optional[str] = ..., interested_piece_numbers: _Optional[_Iterable[int]] = ...) -> None: ...

class SyncPiecesResponse(_message.Message):
    __slots__ = ("number", "offset", "length", "digest")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    number: int
    offset: int
    length: int
    digest: str
    def __init__(self, number: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class DownloadPieceRequest(_message.Message):
    __slots__ = ("host_id", "task_id", "piece_number")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PIECE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    task_id: str
    piece_number: int
    def __init__(self, host_id: _Optional[str] = ..., task_id: _Optional[str] = ..., piece_number: _Optional[int] = ...) -> None: ...

class DownloadPieceResponse(_message.Message):
    __slots__ = ("piece",)
    PIECE_FIELD_NUMBER: _ClassVar[int]
    piece: _common_pb2.Piece
    def __init__(self, piece: _Optional[_Union[_common_pb2.Piece, _Mapping]] = ...) -> None: ...

class StatTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class DownloadTaskRequest(_message.Message):
    __slots__ = ("download",)
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    download: _common_pb2.Download
    def __init__(self, download: _Optional[_Union[_common_pb2.Download, _Mapping]] = ...) -> None: ...

class DownloadTaskStartedResponse(_message.Message):
    __slots__ = ("content_length", "range", "response_header", "pieces", "is_finished")
    class ResponseHeaderEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONTENT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADER_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    IS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    content_length: int
    range: _common_pb2.Range
    response_header: _containers.ScalarMap[str, str]
    pieces: _containers.RepeatedCompositeFieldContainer[_common_pb2.Piece]
    is_finished: bool
    def __init__(self, content_length: _Optional[int] = ..., range: _Optional[_Union[_common_pb2.Range, _Mapping]] = ..., response_header: _Optional[_Mapping[str, str]] = ..., pieces: _Optional[_Iterable[_Union[_common_pb2.Piece, _Mapping]]] = ..., is_finished: _Optional[bool] = ...) -> None: ...

class DownloadPieceFinishedResponse(_message.Message):
    __slots__ = ("piece",)
    PIECE_FIELD_NUMBER: _ClassVar[int]
    piece: _common_pb2.Piece
    def __init__(self, piece: _Optional[_Union[_common_pb2.Piece, _Mapping]] = ...) -> None: ...

class DownloadTaskResponse(_message.Message):
    __slots__ = ("host_id", "task_id", "peer_id", "download_task_started_response", "download_piece_finished_response")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_TASK_STARTED_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PIECE_FINISHED_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    task_id: str
    peer_id: str
    download_task_started_response: DownloadTaskStartedResponse
    download_piece_finished_response: DownloadPieceFinishedResponse
    def __init__(self, host_id: _Optional[str] = ..., task_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., download_task_started_response: _Optional[_Union[DownloadTaskStartedResponse, _Mapping]] = ..., download_piece_finished_response: _Optional[_Union[DownloadPieceFinishedResponse, _Mapping]] = ...) -> None: ...

class DeleteTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LocalTask(_message.Message):
    __slots__ = ("task", "present_piece_count", "present_bytes", "disk_bytes", "last_access", "imported", "active")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PRESENT_PIECE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PRESENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCESS_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    present_piece_count: int
    present_bytes: int
    disk_bytes: int
    last_access: _timestamp_pb2.Timestamp
    imported: bool
    active: bool
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, _Mapping]] = ..., present_piece_count: _Optional[int] = ..., present_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., last_access: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., imported: _Optional[bool] = ..., active: _Optional[bool] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[LocalTask]
    def __init__(self, tasks: _Optional[_Iterable[_Union[LocalTask, _Mapping]]] = ...) -> None: ...

class ImportTaskRequest(_message.Message):
    __slots__ = ("path", "download")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    path: str
    download: _common_pb2.Download
    def __init__(self, path: _Optional[str] = ..., download: _Optional[_Union[_common_pb2.Download, _Mapping]] = ...) -> None: ...

class ExportTaskRequest(_message.Message):
    __slots__ = ("task_id", "download", "output_path", "local_only")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PATH_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    download: _common_pb2.Download
    output_path: str
    local_only: bool
    def __init__(self, task_id: _Optional[str] = ..., download: _Optional[_Union[_common_pb2.Download, _Mapping]] = ..., output_path: _Optional[str] = ..., local_only: _Optional[bool] = ...) -> None: ...

class RunGCRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunGCResponse(_message.Message):
    __slots__ = ("evicted_tasks", "evicted_pieces", "freed_bytes", "used_bytes", "quota_bytes", "high_watermark_bytes", "low_watermark_bytes")
    EVICTED_TASKS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_PIECES_FIELD_NUMBER: _ClassVar[int]
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    HIGH_WATERMARK_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOW_WATERMARK_BYTES_FIELD_NUMBER: _ClassVar[int]
    evicted_tasks: int
    evicted_pieces: int
    freed_bytes: int
    used_bytes: int
    quota_bytes: int
    high_watermark_bytes: int
    low_watermark_bytes: int
    def __init__(self, evicted_tasks: _Optional[int] = ..., evicted_pieces: _Optional[int] = ..., freed_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., quota_bytes: _Optional[int] = ..., high_watermark_bytes: _Optional[int] = ..., low_watermark_bytes: _Optional[int] = ...) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("host_id", "version", "serving")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    version: str
    serving: bool
    def __init__(self, host_id: _Optional[str] = ..., version: _Optional[str] = ..., serving: _Optional[bool] = ...) -> None: ...
