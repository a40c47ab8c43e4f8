import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TYPE_STANDARD: _ClassVar[TaskType]
    TASK_TYPE_PERSISTENT: _ClassVar[TaskType]

class TrafficType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAFFIC_TYPE_BACK_TO_SOURCE: _ClassVar[TrafficType]
    TRAFFIC_TYPE_REMOTE_PEER: _ClassVar[TrafficType]
    TRAFFIC_TYPE_LOCAL_PEER: _ClassVar[TrafficType]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_LEVEL0: _ClassVar[Priority]
    PRIORITY_LEVEL1: _ClassVar[Priority]
    PRIORITY_LEVEL2: _ClassVar[Priority]
    PRIORITY_LEVEL3: _ClassVar[Priority]
    PRIORITY_LEVEL4: _ClassVar[Priority]
    PRIORITY_LEVEL5: _ClassVar[Priority]
    PRIORITY_LEVEL6: _ClassVar[Priority]

class SizeScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIZE_SCOPE_NORMAL: _ClassVar[SizeScope]
    SIZE_SCOPE_SMALL: _ClassVar[SizeScope]
    SIZE_SCOPE_TINY: _ClassVar[SizeScope]
    SIZE_SCOPE_EMPTY: _ClassVar[SizeScope]

class HostType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOST_TYPE_NORMAL: _ClassVar[HostType]
    HOST_TYPE_SEED: _ClassVar[HostType]
TASK_TYPE_STANDARD: TaskType
TASK_TYPE_PERSISTENT: TaskType
TRAFFIC_TYPE_BACK_TO_SOURCE: TrafficType
TRAFFIC_TYPE_REMOTE_PEER: TrafficType
TRAFFIC_TYPE_LOCAL_PEER: TrafficType
PRIORITY_LEVEL0: Priority
PRIORITY_LEVEL1: Priority
PRIORITY_LEVEL2: Priority
PRIORITY_LEVEL3: Priority
PRIORITY_LEVEL4: Priority
PRIORITY_LEVEL5: Priority
PRIORITY_LEVEL6: Priority
SIZE_SCOPE_NORMAL: SizeScope
SIZE_SCOPE_SMALL: SizeScope
SIZE_SCOPE_TINY: SizeScope
SIZE_SCOPE_EMPTY: SizeScope
HOST_TYPE_NORMAL: HostType
HOST_TYPE_SEED: HostType

class Range(_message.Message):
    __slots__ = ("start", "length")
    START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    start: int
    length: int
    def __init__(self, start: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class Piece(_message.Message):
    __slots__ = ("number", "parent_id", "offset", "length", "digest", "traffic_type", "cost", "created_at")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_TYPE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    number: int
    parent_id: str
    offset: int
    length: int
    digest: str
    traffic_type: TrafficType
    cost: _duration_pb2.Duration
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, number: _Optional[int] = ..., parent_id: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., digest: _Optional[str] = ..., traffic_type: _Optional[_Union[TrafficType, str]] = ..., cost: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CPU(_message.Message):
    __slots__ = ("logical_count", "percent", "process_percent")
    LOGICAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    PROCESS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    logical_count: int
    percent: float
    process_percent: float
    def __init__(self, logical_count: _Optional[int] = ..., percent: _Optional[float] = ..., process_percent: _Optional[float] = ...) -> None: ...

class Memory(_message.Message):
    __slots__ = ("total", "available", "used_percent", "process_used_percent")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    USED_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PROCESS_USED_PERCENT_FIELD_NUMBER: _ClassVar[int]
    total: int
    available: int
    used_percent: float
    process_used_percent: float
    def __init__(self, total: _Optional[int] = ..., available: _Optional[int] = ..., used_percent: _Optional[float] = ..., process_used_percent: _Optional[float] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("tcp_connection_count", "upload_tcp_connection_count", "download_rate", "download_rate_limit", "upload_rate", "upload_rate_limit")
    TCP_CONNECTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_TCP_CONNECTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_RATE_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_RATE_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    tcp_connection_count: int
    upload_tcp_connection_count: int
    download_rate: int
    download_rate_limit: int
    upload_rate: int
    upload_rate_limit: int
    def __init__(self, tcp_connection_count: _Optional[int] = ..., upload_tcp_connection_count: _Optional[int] = ..., download_rate: _Optional[int] = ..., download_rate_limit: _Optional[int] = ..., upload_rate: _Optional[int] = ..., upload_rate_limit: _Optional[int] = ...) -> None: ...

class Disk(_message.Message):
    __slots__ = ("total", "free", "used", "used_percent")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    USED_PERCENT_FIELD_NUMBER: _ClassVar[int]
    total: int
    free: int
    used: int
    used_percent: float
    def __init__(self, total: _Optional[int] = ..., free: _Optional[int] = ..., used: _Optional[int] = ..., used_percent: _Optional[float] = ...) -> None: ...

class Host(_message.Message):
    __slots__ = ("id", "type", "hostname", "ip", "port", "download_port", "idc", "location", "labels", "os", "version", "cpu", "memory", "network", "disk", "scheduler_cluster_id", "disable_shared")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PORT_FIELD_NUMBER: _ClassVar[int]
    IDC_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    DISABLE_SHARED_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: HostType
    hostname: str
    ip: str
    port: int
    download_port: int
    idc: str
    location: str
    labels: _containers.ScalarMap[str, str]
    os: str
    version: str
    cpu: CPU
    memory: Memory
    network: Network
    disk: Disk
    scheduler_cluster_id: int
    disable_shared: bool
    def __init__(self, id: _Optional[str] = ..., type: _Optional[_Union[HostType, str]] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., port: _Optional[int] = ..., download_port: _Optional[int] = ..., idc: _Optional[str] = ..., location: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., os: _Optional[str] = ..., version: _Optional[str] = ..., cpu: _Optional[_Union[CPU, _Mapping]] = ..., memory: _Optional[_Union[Memory, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., disk: _Optional[_Union[Disk, _Mapping]] = ..., scheduler_cluster_id: _Optional[int] = ..., disable_shared: _Optional[bool] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "type", "url", "digest", "tag", "application", "filtered_query_params", "request_header", "piece_length", "content_length", "piece_count", "size_scope", "state", "peer_count", "has_available_peer", "created_at", "updated_at", "etag", "last_modified", "content_type")
    class RequestHeaderEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    FILTERED_QUERY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADER_FIELD_NUMBER: _ClassVar[int]
    PIECE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PIECE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_SCOPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PEER_COUNT_FIELD_NUMBER: _ClassVar[int]
    HAS_AVAILABLE_PEER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    LAST_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: TaskType
    url: str
    digest: str
    tag: str
    application: str
    filtered_query_params: _containers.RepeatedScalarFieldContainer[str]
    request_header: _containers.ScalarMap[str, str]
    piece_length: int
    content_length: int
    piece_count: int
    size_scope: SizeScope
    state: str
    peer_count: int
    has_available_peer: bool
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    etag: str
    last_modified: str
    content_type: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[_Union[TaskType, str]] = ..., url: _Optional[str] = ..., digest: _Optional[str] = ..., tag: _Optional[str] = ..., application: _Optional[str] = ..., filtered_query_params: _Optional[_Iterable[str]] = ..., request_header: _Optional[_Mapping[str, str]] = ..., piece_length: _Optional[int] = ..., content_length: _Optional[int] = ..., piece_count: _Optional[int] = ..., size_scope: _Optional[_Union[SizeScope, str]] = ..., state: _Optional[str] = ..., peer_count: _Optional[int] = ..., has_available_peer: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ..., last_modified: _Optional[str] = ..., content_type: _Optional[str] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("id", "range", "priority", "pieces", "cost", "state", "task", "host", "need_back_to_source", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    NEED_BACK_TO_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    range: Range
    priority: Priority
    pieces: _containers.RepeatedCompositeFieldContainer[Piece]
    cost: _duration_pb2.Duration
    state: str
    task: Task
    host: Host
    need_back_to_source: bool
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., range: _Optional[_Union[Range, _Mapping]] = ..., priority: _Optional[_Union[Priority, str]] = ..., pieces: _Optional[_Iterable[_Union[Piece, _Mapping]]] = ..., cost: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., state: _Optional[str] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., host: _Optional[_Union[Host, _Mapping]] = ..., need_back_to_source: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Download(_message.Message):
    __slots__ = ("url", "digest", "range", "type", "tag", "application", "priority", "filtered_query_params", "request_header", "piece_length", "output_path", "timeout", "disable_back_to_source", "need_back_to_source", "prefetch")
    class RequestHeaderEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    URL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    FILTERED_QUERY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADER_FIELD_NUMBER: _ClassVar[int]
    PIECE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PATH_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DISABLE_BACK_TO_SOURCE_FIELD_NUMBER: _ClassVar[int]
    NEED_BACK_TO_SOURCE_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    url: str
    digest: str
    range: Range
    type: TaskType
    tag: str
    application: str
    priority: Priority
    filtered_query_params: _containers.RepeatedScalarFieldContainer[str]
    request_header: _containers.ScalarMap[str, str]
    piece_length: int
    output_path: str
    timeout: _duration_pb2.Duration
    disable_back_to_source: bool
    need_back_to_source: bool
    prefetch: bool
    def __init__(self, url: _Optional[str] = ..., digest: _Optional[str] = ..., range: _Optional[_Union[Range, _Mapping]] = ..., type: _Optional[_Union[TaskType, str]] = ..., tag: _Optional[str] = ..., application: _Optional[str] = ..., priority: _Optional[_Union[Priority, str]] = ..., filtered_query_params: _Optional[_Iterable[str]] = ..., request_header: _Optional[_Mapping[str, str]] = ..., piece_length: _Optional[int] = ..., output_path: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., disable_back_to_source: _Optional[bool] = ..., need_back_to_source: _Optional[bool] = ..., prefetch: _Optional[bool] = ...) -> None: ...
