import datetime

from dffs.api import common_pb2 as _common_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SourceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_TYPE_SCHEDULER: _ClassVar[SourceType]
    SOURCE_TYPE_PEER: _ClassVar[SourceType]
    SOURCE_TYPE_SEED_PEER: _ClassVar[SourceType]

class JobType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_TYPE_PREHEAT: _ClassVar[JobType]
    JOB_TYPE_GET_TASK: _ClassVar[JobType]
    JOB_TYPE_DELETE_TASK: _ClassVar[JobType]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]

class JobScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_SCOPE_SINGLE_SEED_PEER: _ClassVar[JobScope]
    JOB_SCOPE_ALL_SEED_PEERS: _ClassVar[JobScope]
    JOB_SCOPE_ALL_PEERS: _ClassVar[JobScope]

class PreheatType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREHEAT_TYPE_FILE: _ClassVar[PreheatType]
    PREHEAT_TYPE_IMAGE: _ClassVar[PreheatType]
SOURCE_TYPE_SCHEDULER: SourceType
SOURCE_TYPE_PEER: SourceType
SOURCE_TYPE_SEED_PEER: SourceType
JOB_TYPE_PREHEAT: JobType
JOB_TYPE_GET_TASK: JobType
JOB_TYPE_DELETE_TASK: JobType
JOB_STATE_PENDING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_SCOPE_SINGLE_SEED_PEER: JobScope
JOB_SCOPE_ALL_SEED_PEERS: JobScope
JOB_SCOPE_ALL_PEERS: JobScope
PREHEAT_TYPE_FILE: PreheatType
PREHEAT_TYPE_IMAGE: PreheatType

class Scheduler(_message.Message):
    __slots__ = ("id", "hostname", "ip", "port", "idc", "location", "state", "cluster_id", "seed_peers")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    IDC_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_PEERS_FIELD_NUMBER: _ClassVar[int]
    id: int
    hostname: str
    ip: str
    port: int
    idc: str
    location: str
    state: str
    cluster_id: int
    seed_peers: _containers.RepeatedCompositeFieldContainer[SeedPeer]
    def __init__(self, id: _Optional[int] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., port: _Optional[int] = ..., idc: _Optional[str] = ..., location: _Optional[str] = ..., state: _Optional[str] = ..., cluster_id: _Optional[int] = ..., seed_peers: _Optional[_Iterable[_Union[SeedPeer, _Mapping]]] = ...) -> None: ...

class SeedPeer(_message.Message):
    __slots__ = ("id", "hostname", "type", "ip", "port", "download_port", "idc", "location", "state", "cluster_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PORT_FIELD_NUMBER: _ClassVar[int]
    IDC_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    hostname: str
    type: _common_pb2.HostType
    ip: str
    port: int
    download_port: int
    idc: str
    location: str
    state: str
    cluster_id: int
    def __init__(self, id: _Optional[int] = ..., hostname: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.HostType, str]] = ..., ip: _Optional[str] = ..., port: _Optional[int] = ..., download_port: _Optional[int] = ..., idc: _Optional[str] = ..., location: _Optional[str] = ..., state: _Optional[str] = ..., cluster_id: _Optional[int] = ...) -> None: ...

class ListSchedulersRequest(_message.Message):
    __slots__ = ("source_type", "hostname", "ip", "idc", "location", "version")
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    IDC_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    source_type: SourceType
    hostname: str
    ip: str
    idc: str
    location: str
    version: str
    def __init__(self, source_type: _Optional[_Union[SourceType, str]] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., idc: _Optional[str] = ..., location: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ListSchedulersResponse(_message.Message):
    __slots__ = ("schedulers",)
    SCHEDULERS_FIELD_NUMBER: _ClassVar[int]
    schedulers: _containers.RepeatedCompositeFieldContainer[Scheduler]
    def __init__(self, schedulers: _Optional[_Iterable[_Union[Scheduler, _Mapping]]] = ...) -> None: ...

class GetSchedulerRequest(_message.Message):
    __slots__ = ("source_type", "hostname", "ip", "cluster_id")
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    source_type: SourceType
    hostname: str
    ip: str
    cluster_id: int
    def __init__(self, source_type: _Optional[_Union[SourceType, str]] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., cluster_id: _Optional[int] = ...) -> None: ...

class UpdateSchedulerRequest(_message.Message):
    __slots__ = ("source_type", "hostname", "ip", "port", "idc", "location", "cluster_id")
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    IDC_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    source_type: SourceType
    hostname: str
    ip: str
    port: int
    idc: str
    location: str
    cluster_id: int
    def __init__(self, source_type: _Optional[_Union[SourceType, str]] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., port: _Optional[int] = ..., idc: _Optional[str] = ..., location: _Optional[str] = ..., cluster_id: _Optional[int] = ...) -> None: ...

class ListSeedPeersRequest(_message.Message):
    __slots__ = ("source_type", "hostname", "ip", "cluster_id")
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    source_type: SourceType
    hostname: str
    ip: str
    cluster_id: int
    def __init__(self, source_type: _Optional[_Union[SourceType, str]] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., cluster_id: _Optional[int] = ...) -> None: ...

class ListSeedPeersResponse(_message.Message):
    __slots__ = ("seed_peers",)
    SEED_PEERS_FIELD_NUMBER: _ClassVar[int]
    seed_peers: _containers.RepeatedCompositeFieldContainer[SeedPeer]
    def __init__(self, seed_peers: _Optional[_Iterable[_Union[SeedPeer, _Mapping]]] = ...) -> None: ...

class UpdateSeedPeerRequest(_message.Message):
    __slots__ = ("source_type", "hostname", "type", "ip", "port", "download_port", "idc", "location", "cluster_id")
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_PORT_FIELD_NUMBER: _ClassVar[int]
    IDC_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    source_type: SourceType
    hostname: str
    type: _common_pb2.HostType
    ip: str
    port: int
    download_port: int
    idc: str
    location: str
    cluster_id: int
    def __init__(self, source_type: _Optional[_Union[SourceType, str]] = ..., hostname: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.HostType, str]] = ..., ip: _Optional[str] = ..., port: _Optional[int] = ..., download_port: _Optional[int] = ..., idc: _Optional[str] = ..., location: _Optional[str] = ..., cluster_id: _Optional[int] = ...) -> None: ...

class DeleteSeedPeerRequest(_message.Message):
    __slots__ = ("source_type", "hostname", "ip", "cluster_id")
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    source_type: SourceType
    hostname: str
    ip: str
    cluster_id: int
    def __init__(self, source_type: _Optional[_Union[SourceType, str]] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., cluster_id: _Optional[int] = ...) -> None: ...

class KeepAliveRequest(_message.Message):
    __slots__ = ("source_type", "hostname", "ip", "cluster_id")
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    source_type: SourceType
    hostname: str
    ip: str
    cluster_id: int
    def __init__(self, source_type: _Optional[_Union[SourceType, str]] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., cluster_id: _Optional[int] = ...) -> None: ...

class GetClusterConfigRequest(_message.Message):
    __slots__ = ("source_type", "hostname", "ip", "cluster_id")
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    source_type: SourceType
    hostname: str
    ip: str
    cluster_id: int
    def __init__(self, source_type: _Optional[_Union[SourceType, str]] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., cluster_id: _Optional[int] = ...) -> None: ...

class ClusterConfig(_message.Message):
    __slots__ = ("cluster_id", "name", "scheduler_config_json", "client_config_json", "idcs", "location", "cidrs")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    IDCS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CIDRS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: int
    name: str
    scheduler_config_json: str
    client_config_json: str
    idcs: _containers.RepeatedScalarFieldContainer[str]
    location: str
    cidrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cluster_id: _Optional[int] = ..., name: _Optional[str] = ..., scheduler_config_json: _Optional[str] = ..., client_config_json: _Optional[str] = ..., idcs: _Optional[_Iterable[str]] = ..., location: _Optional[str] = ..., cidrs: _Optional[_Iterable[str]] = ...) -> None: ...

class PreheatArgs(_message.Message):
    __slots__ = ("type", "urls", "tag", "application", "filtered_query_params", "headers", "piece_length", "platform", "username", "password", "recursive")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    URLS_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    FILTERED_QUERY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PIECE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    type: PreheatType
    urls: _containers.RepeatedScalarFieldContainer[str]
    tag: str
    application: str
    filtered_query_params: _containers.RepeatedScalarFieldContainer[str]
    headers: _containers.ScalarMap[str, str]
    piece_length: int
    platform: str
    username: str
    password: str
    recursive: bool
    def __init__(self, type: _Optional[_Union[PreheatType, str]] = ..., urls: _Optional[_Iterable[str]] = ..., tag: _Optional[str] = ..., application: _Optional[str] = ..., filtered_query_params: _Optional[_Iterable[str]] = ..., headers: _Optional[_Mapping[str, str]] = ..., piece_length: _Optional[int] = ..., platform: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ..., recursive: _Optional[bool] = ...) -> None: ...

class TaskArgs(_message.Message):
    __slots__ = ("task_id", "url", "tag", "application", "filtered_query_params")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    FILTERED_QUERY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    url: str
    tag: str
    application: str
    filtered_query_params: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_id: _Optional[str] = ..., url: _Optional[str] = ..., tag: _Optional[str] = ..., application: _Optional[str] = ..., filtered_query_params: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("type", "scope", "cluster_ids", "preheat", "task")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_IDS_FIELD_NUMBER: _ClassVar[int]
    PREHEAT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    type: JobType
    scope: JobScope
    cluster_ids: _containers.RepeatedScalarFieldContainer[int]
    preheat: PreheatArgs
    task: TaskArgs
    def __init__(self, type: _Optional[_Union[JobType, str]] = ..., scope: _Optional[_Union[JobScope, str]] = ..., cluster_ids: _Optional[_Iterable[int]] = ..., preheat: _Optional[_Union[PreheatArgs, _Mapping]] = ..., task: _Optional[_Union[TaskArgs, _Mapping]] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("hostname", "ip", "host_id", "success", "description", "tasks")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    ip: str
    host_id: str
    success: bool
    description: str
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Task]
    def __init__(self, hostname: _Optional[str] = ..., ip: _Optional[str] = ..., host_id: _Optional[str] = ..., success: _Optional[bool] = ..., description: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.Task, _Mapping]]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "type", "state", "scope", "cluster_ids", "preheat", "task", "results", "description", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_IDS_FIELD_NUMBER: _ClassVar[int]
    PREHEAT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    type: JobType
    state: JobState
    scope: JobScope
    cluster_ids: _containers.RepeatedScalarFieldContainer[int]
    preheat: PreheatArgs
    task: TaskArgs
    results: _containers.RepeatedCompositeFieldContainer[JobResult]
    description: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., type: _Optional[_Union[JobType, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., scope: _Optional[_Union[JobScope, str]] = ..., cluster_ids: _Optional[_Iterable[int]] = ..., preheat: _Optional[_Union[PreheatArgs, _Mapping]] = ..., task: _Optional[_Union[TaskArgs, _Mapping]] = ..., results: _Optional[_Iterable[_Union[JobResult, _Mapping]]] = ..., description: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("type", "state", "limit")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    type: JobType
    state: JobState
    limit: int
    def __init__(self, type: _Optional[_Union[JobType, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...
