"""``dffs ctl --manager ADDR preheat ...`` and ``dffs ctl --manager ADDR jobs``: the manager's jobs over gRPC."""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from dffs.api import manager_pb2 as pb
from dffs.api import manager_pb2_grpc
from dffs.config import DEFAULT_DATA_DIR
from dffs.errors import DffsError, UsageError
from dffs.manager.job_names import SCOPE_FROM_PB, SCOPE_TO_PB, STATE_FROM_PB, STATE_TO_PB
from dffs.security.ca import Identity
from dffs.security.setup import make_transport

_FINISHED = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED)
_CALL_TIMEOUT = 10.0
_POLL = 0.5


class _Manager:
    def __init__(self, args: argparse.Namespace):
        address = getattr(args, "manager", None)
        if not address:
            raise UsageError(f"dffs ctl {args.ctl_command} needs --manager ADDR (the manager's gRPC address)")
        self.address = address
        transport = make_transport(
            "ctl",
            Identity("client", f"{socket.gethostname()}:{os.getpid()}"),
            cluster_key=getattr(args, "cluster_key", None),
            insecure_ok=bool(getattr(args, "insecure", False)),
            data_dir=Path(getattr(args, "data_dir", None) or DEFAULT_DATA_DIR),
            addresses=[address],
            create=False,
        )
        self.channel = transport.channel(address)
        self.stub = manager_pb2_grpc.ManagerStub(self.channel)

    def call(self, method: str, request):
        try:
            return getattr(self.stub, method)(request, timeout=_CALL_TIMEOUT)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                raise UsageError(exc.details()) from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise DffsError(f"manager at {self.address} is not answering: {exc.details()}") from None
            raise DffsError(f"manager: {code.name}: {exc.details()}") from None

    def close(self) -> None:
        self.channel.close()


def job_dict(job: pb.Job) -> dict:
    out = json_format.MessageToDict(job, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    out["state"] = STATE_FROM_PB[job.state]
    out["scope"] = SCOPE_FROM_PB[job.scope]
    return out


def _describe(job: pb.Job) -> str:
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at.seconds))
    urls = ", ".join(job.preheat.urls)
    line = f"job {job.id}  {STATE_FROM_PB[job.state]:<9}  scope {SCOPE_FROM_PB[job.scope]}  created {created}  {urls}"
    if job.description:
        line += f"\n  {job.description}"
    return line


def _print_results(job: pb.Job) -> None:
    for result in job.results:
        mark = "ok  " if result.success else "FAIL"
        url = result.tasks[0].url if result.tasks else ""
        print(f"  {mark} {result.hostname} ({result.ip})  {url}  {result.description}".rstrip())


def _headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"bad --header {value!r}: expected 'Name: value'")
        headers[name.strip()] = content.strip()
    return headers


def run_preheat(args: argparse.Namespace) -> int:
    manager = _Manager(args)
    try:
        preheat = pb.PreheatArgs(
            urls=args.urls,
            headers=_headers(getattr(args, "header", None) or []),
            platform=getattr(args, "platform", None) or "",
            recursive=bool(getattr(args, "recursive", False)),
        )
        for key in ("tag", "application"):
            if getattr(args, key, None):
                setattr(preheat, key, getattr(args, key))
        job = manager.call(
            "CreateJob",
            pb.CreateJobRequest(
                type=pb.JOB_TYPE_PREHEAT, scope=SCOPE_TO_PB[args.scope], cluster_ids=args.cluster_id, preheat=preheat
            ),
        )
        if args.wait:
            deadline = time.monotonic() + (args.timeout if args.timeout else math.inf)
            while job.state not in _FINISHED:
                if time.monotonic() > deadline:
                    raise DffsError(f"job {job.id} still {STATE_FROM_PB[job.state]} after {args.timeout:g}s")
                time.sleep(_POLL)
                job = manager.call("GetJob", pb.GetJobRequest(id=job.id))
        if getattr(args, "json", False):
            print(json.dumps(job_dict(job), indent=2, sort_keys=True))
        else:
            print(_describe(job))
            _print_results(job)
        if job.state == pb.JOB_STATE_FAILED:
            print(f"dffs: error: job {job.id} failed: {job.description}", file=sys.stderr)
            return 1
        return 0
    finally:
        manager.close()


def run_jobs(args: argparse.Namespace) -> int:
    manager = _Manager(args)
    try:
        if args.id is not None:
            jobs = [manager.call("GetJob", pb.GetJobRequest(id=args.id))]
        else:
            if args.limit is not None and not 1 <= args.limit <= 1000:
                raise UsageError("--limit must be from 1 to 1000")
            request = pb.ListJobsRequest(limit=args.limit or 0)
            if args.state:
                if args.state not in STATE_TO_PB:
                    raise UsageError(f"--state must be one of {', '.join(STATE_TO_PB)}, not {args.state!r}")
                request.state = STATE_TO_PB[args.state]
            jobs = list(manager.call("ListJobs", request).jobs)
        if getattr(args, "json", False):
            print(json.dumps([job_dict(j) for j in jobs], indent=2, sort_keys=True))
            return 0
        if not jobs:
            print("no jobs")
        for job in jobs:
            print(_describe(job))
            if args.id is not None:
                _print_results(job)
        return 0
    finally:
        manager.close()
