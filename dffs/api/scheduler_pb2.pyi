import datetime

from dffs.api import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterPeerRequest(_message.Message):
    __slots__ = ("download",)
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    download: _common_pb2.Download
    def __init__(self, download: _Optional[_Union[_common_pb2.Download, _Mapping]] = ...) -> None: ...

class DownloadPeerStartedRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DownloadPeerBackToSourceStartedRequest(_message.Message):
    __slots__ = ("description",)
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    description: str
    def __init__(self, description: _Optional[str] = ...) -> None: ...

class RescheduleRequest(_message.Message):
    __slots__ = ("candidate_parents", "description")
    CANDIDATE_PARENTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    candidate_parents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Peer]
    description: str
    def __init__(self, candidate_parents: _Optional[_Iterable[_Union[_common_pb2.Peer, _Mapping]]] = ..., description: _Optional[str] = ...) -> None: ...

class DownloadPeerFinishedRequest(_message.Message):
    __slots__ = ("content_length", "piece_count", "etag", "last_modified", "content_type")
    CONTENT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PIECE_COUNT_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    LAST_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    content_length: int
    piece_count: int
    etag: str
    last_modified: str
    content_type: str
    def __init__(self, content_length: _Optional[int] = ..., piece_count: _Optional[int] = ..., etag: _Optional[str] = ..., last_modified: _Optional[str] = ..., content_type: _Optional[str] = ...) -> None: ...

class DownloadPeerBackToSourceFinishedRequest(_message.Message):
    __slots__ = ("content_length", "piece_count", "etag", "last_modified", "content_type")
    CONTENT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PIECE_COUNT_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    LAST_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    content_length: int
    piece_count: int
    etag: str
    last_modified: str
    content_type: str
    def __init__(self, content_length: _Optional[int] = ..., piece_count: _Optional[int] = ..., etag: _Optional[str] = ..., last_modified: _Optional[str] = ..., content_type: _Optional[str] = ...) -> None: ...

class DownloadPeerFailedRequest(_message.Message):
    __slots__ = ("description",)
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    description: str
    def __init__(self, description: _Optional[str] = ...) -> None: ...

class DownloadPeerBackToSourceFailedRequest(_message.Message):
    __slots__ = ("description",)
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    description: str
    def __init__(self, description: _Optional[str] = ...) -> None: ...

class DownloadPieceFinishedRequest(_message.Message):
    __slots__ = ("piece",)
    PIECE_FIELD_NUMBER: _ClassVar[int]
    piece: _common_pb2.Piece
    def __init__(self, piece: _Optional[_Union[_common_pb2.Piece, _Mapping]] = ...) -> None: ...

class DownloadPieceBackToSourceFinishedRequest(_message.Message):
    __slots__ = ("piece",)
    PIECE_FIELD_NUMBER: _ClassVar[int]
    piece: _common_pb2.Piece
    def __init__(self, piece: _Optional[_Union[_common_pb2.Piece, _Mapping]] = ...) -> None: ...

class DownloadPieceFailedRequest(_message.Message):
    __slots__ = ("piece_number", "parent_id", "temporary", "description", "unreachable")
    PIECE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPORARY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    piece_number: int
    parent_id: str
    temporary: bool
    description: str
    unreachable: bool
    def __init__(self, piece_number: _Optional[int] = ..., parent_id: _Optional[str] = ..., temporary: _Optional[bool] = ..., description: _Optional[str] = ..., unreachable: _Optional[bool] = ...) -> None: ...

class DownloadPieceBackToSourceFailedRequest(_message.Message):
    __slots__ = ("piece_number", "description")
    PIECE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    piece_number: int
    description: str
    def __init__(self, piece_number: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class AnnouncePeerRequest(_message.Message):
    __slots__ = ("host_id", "task_id", "peer_id", "register_peer_request", "download_peer_started_request", "download_peer_back_to_source_started_request", "reschedule_request", "download_peer_finished_request", "download_peer_back_to_source_finished_request", "download_peer_failed_request", "download_peer_back_to_source_failed_request", "download_piece_finished_request", "download_piece_back_to_source_finished_request", "download_piece_failed_request", "download_piece_back_to_source_failed_request")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTER_PEER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PEER_STARTED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PEER_BACK_TO_SOURCE_STARTED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESCHEDULE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PEER_FINISHED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PEER_BACK_TO_SOURCE_FINISHED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PEER_FAILED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PEER_BACK_TO_SOURCE_FAILED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PIECE_FINISHED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PIECE_BACK_TO_SOURCE_FINISHED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PIECE_FAILED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PIECE_BACK_TO_SOURCE_FAILED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    task_id: str
    peer_id: str
    register_peer_request: RegisterPeerRequest
    download_peer_started_request: DownloadPeerStartedRequest
    download_peer_back_to_source_started_request: DownloadPeerBackToSourceStartedRequest
    reschedule_request: RescheduleRequest
    download_peer_finished_request: DownloadPeerFinishedRequest
    download_peer_back_to_source_finished_request: DownloadPeerBackToSourceFinishedRequest
    download_peer_failed_request: DownloadPeerFailedRequest
    download_peer_back_to_source_failed_request: DownloadPeerBackToSourceFailedRequest
    download_piece_finished_request: DownloadPieceFinishedRequest
    download_piece_back_to_source_finished_request: DownloadPieceBackToSourceFinishedRequest
    download_piece_failed_request: DownloadPieceFailedRequest
    download_piece_back_to_source_failed_request: DownloadPieceBackToSourceFailedRequest
    def __init__(self, host_id: _Optional[str] = ..., task_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., register_peer_request: _Optional[_Union[RegisterPeerRequest, _Mapping]] = ..., download_peer_started_request: _Optional[_Union[DownloadPeerStartedRequest, _Mapping]] = ..., download_peer_back_to_source_started_request: _Optional[_Union[DownloadPeerBackToSourceStartedRequest, _Mapping]] = ..., reschedule_request: _Optional[_Union[RescheduleRequest, _Mapping]] = ..., download_peer_finished_request: _Optional[_Union[DownloadPeerFinishedRequest, _Mapping]] = ..., download_peer_back_to_source_finished_request: _Optional[_Union[DownloadPeerBackToSourceFinishedRequest, _Mapping]] = ..., download_peer_failed_request: _Optional[_Union[DownloadPeerFailedRequest, _Mapping]] = ..., download_peer_back_to_source_failed_request: _Optional[_Union[DownloadPeerBackToSourceFailedRequest, _Mapping]] = ..., download_piece_finished_request: _Optional[_Union[DownloadPieceFinishedRequest, _Mapping]] = ..., download_piece_back_to_source_finished_request: _Optional[_Union[DownloadPieceBackToSourceFinishedRequest, _Mapping]] = ..., download_piece_failed_request: _Optional[_Union[DownloadPieceFailedRequest, _Mapping]] = ..., download_piece_back_to_source_failed_request: _Optional[_Union[DownloadPieceBackToSourceFailedRequest, _Mapping]] = ...) -> None: ...

class EmptyTaskResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NormalTaskResponse(_message.Message):
    __slots__ = ("candidate_parents", "concurrent_piece_count")
    CANDIDATE_PARENTS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_PIECE_COUNT_FIELD_NUMBER: _ClassVar[int]
    candidate_parents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Peer]
    concurrent_piece_count: int
    def __init__(self, candidate_parents: _Optional[_Iterable[_Union[_common_pb2.Peer, _Mapping]]] = ..., concurrent_piece_count: _Optional[int] = ...) -> None: ...

class NeedBackToSourceResponse(_message.Message):
    __slots__ = ("description", "helpers")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    HELPERS_FIELD_NUMBER: _ClassVar[int]
    description: str
    helpers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Peer]
    def __init__(self, description: _Optional[str] = ..., helpers: _Optional[_Iterable[_Union[_common_pb2.Peer, _Mapping]]] = ...) -> None: ...

class AnnouncePeerResponse(_message.Message):
    __slots__ = ("empty_task_response", "normal_task_response", "need_back_to_source_response")
    EMPTY_TASK_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    NORMAL_TASK_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    NEED_BACK_TO_SOURCE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    empty_task_response: EmptyTaskResponse
    normal_task_response: NormalTaskResponse
    need_back_to_source_response: NeedBackToSourceResponse
    def __init__(self, empty_task_response: _Optional[_Union[EmptyTaskResponse, _Mapping]] = ..., normal_task_response: _Optional[_Union[NormalTaskResponse, _Mapping]] = ..., need_back_to_source_response: _Optional[_Union[NeedBackToSourceResponse, _Mapping]] = ...) -> None: ...

class StatPeerRequest(_message.Message):
    __slots__ = ("host_id", "task_id", "peer_id")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    task_id: str
    peer_id: str
    def __init__(self, host_id: _Optional[str] = ..., task_id: _Optional[str] = ..., peer_id: _Optional[str] = ...) -> None: ...

class DeletePeerRequest(_message.Message):
    __slots__ = ("host_id", "task_id", "peer_id")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    task_id: str
    peer_id: str
    def __init__(self, host_id: _Optional[str] = ..., task_id: _Optional[str] = ..., peer_id: _Optional[str] = ...) -> None: ...

class StatTaskRequest(_message.Message):
    __slots__ = ("host_id", "task_id")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    task_id: str
    def __init__(self, host_id: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class StatTasksRequest(_message.Message):
    __slots__ = ("host_id", "task_ids", "holders_per_task")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_PER_TASK_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    holders_per_task: int
    def __init__(self, host_id: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ..., holders_per_task: _Optional[int] = ...) -> None: ...

class StatTasksResponse(_message.Message):
    __slots__ = ("tasks", "holders")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Task]
    holders: _containers.RepeatedCompositeFieldContainer[TaskHolders]
    def __init__(self, tasks: _Optional[_Iterable[_Union[_common_pb2.Task, _Mapping]]] = ..., holders: _Optional[_Iterable[_Union[TaskHolders, _Mapping]]] = ...) -> None: ...

class TaskHolders(_message.Message):
    __slots__ = ("task_id", "peers", "piece_digest")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    PIECE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    peers: _containers.RepeatedCompositeFieldContainer[_common_pb2.Peer]
    piece_digest: str
    def __init__(self, task_id: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[_common_pb2.Peer, _Mapping]]] = ..., piece_digest: _Optional[str] = ...) -> None: ...

class FinishedTask(_message.Message):
    __slots__ = ("task_id", "peer_id", "download", "content_length", "piece_count", "pieces", "etag", "last_modified", "content_type")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PIECE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    LAST_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    peer_id: str
    download: _common_pb2.Download
    content_length: int
    piece_count: int
    pieces: _containers.RepeatedCompositeFieldContainer[_common_pb2.Piece]
    etag: str
    last_modified: str
    content_type: str
    def __init__(self, task_id: _Optional[str] = ..., peer_id: _Optional[str] = ..., download: _Optional[_Union[_common_pb2.Download, _Mapping]] = ..., content_length: _Optional[int] = ..., piece_count: _Optional[int] = ..., pieces: _Optional[_Iterable[_Union[_common_pb2.Piece, _Mapping]]] = ..., etag: _Optional[str] = ..., last_modified: _Optional[str] = ..., content_type: _Optional[str] = ...) -> None: ...

class AnnounceFinishedTasksRequest(_message.Message):
    __slots__ = ("host_id", "tasks")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    tasks: _containers.RepeatedCompositeFieldContainer[FinishedTask]
    def __init__(self, host_id: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[FinishedTask, _Mapping]]] = ...) -> None: ...

class AnnounceFinishedTasksResponse(_message.Message):
    __slots__ = ("refused",)
    class RefusedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    refused: _containers.ScalarMap[str, str]
    def __init__(self, refused: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DeleteTaskRequest(_message.Message):
    __slots__ = ("host_id", "task_id")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    task_id: str
    def __init__(self, host_id: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class DeletePiecesRequest(_message.Message):
    __slots__ = ("host_id", "task_id", "piece_numbers")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PIECE_NUMBERS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    task_id: str
    piece_numbers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, host_id: _Optional[str] = ..., task_id: _Optional[str] = ..., piece_numbers: _Optional[_Iterable[int]] = ...) -> None: ...

class GetPieceDigestsRequest(_message.Message):
    __slots__ = ("host_id", "task_id", "piece_numbers")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PIECE_NUMBERS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    task_id: str
    piece_numbers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, host_id: _Optional[str] = ..., task_id: _Optional[str] = ..., piece_numbers: _Optional[_Iterable[int]] = ...) -> None: ...

class GetPieceDigestsResponse(_message.Message):
    __slots__ = ("digests",)
    class DigestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.ScalarMap[int, str]
    def __init__(self, digests: _Optional[_Mapping[int, str]] = ...) -> None: ...

class AnnounceHostRequest(_message.Message):
    __slots__ = ("host", "interval")
    HOST_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    host: _common_pb2.Host
    interval: _duration_pb2.Duration
    def __init__(self, host: _Optional[_Union[_common_pb2.Host, _Mapping]] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AnnounceHostResponse(_message.Message):
    __slots__ = ("host_known",)
    HOST_KNOWN_FIELD_NUMBER: _ClassVar[int]
    host_known: bool
    def __init__(self, host_known: _Optional[bool] = ...) -> None: ...

class DeleteHostRequest(_message.Message):
    __slots__ = ("host_id",)
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    def __init__(self, host_id: _Optional[str] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts",)
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Host]
    def __init__(self, hosts: _Optional[_Iterable[_Union[_common_pb2.Host, _Mapping]]] = ...) -> None: ...
