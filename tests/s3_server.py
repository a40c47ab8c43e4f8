"""moto's standalone S3 server for tests (there is no MinIO here; moto speaks the S3 REST API).

moto only checks SigV4 signatures when its IAM authentication is on, so the
fixture creates an IAM user and access key through moto's IAM API and then
turns authentication on: from then on a badly signed request gets 403.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import attrs
import pytest

BUCKET = "dffs-test"
REGION = "us-east-1"
MANY = 1100  # more than one ListObjectsV2 page (1000 keys)
BLOB_KEY = "data/blob.bin"
ODD_KEY = "odd name/a+b&c=d ü~(1).txt"  # every character class SigV4 encodes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, data: bytes | None = None) -> tuple[int, bytes]:
    # Not form-encoded: moto's reset-auth reads the raw body, which Flask leaves empty for forms.
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@attrs.frozen
class MotoS3:
    endpoint: str
    access_key: str
    secret_key: str
    blob: bytes
    odd: bytes
    process: subprocess.Popen
    role_arn: str

    def client(self, service: str = "s3", secret_key: str | None = None):
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def env(self, monkeypatch, *, secret_key: str | None = None) -> None:
        """The standard AWS variables for this server; nothing else from the host's AWS setup."""
        for name in (
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_DEFAULT_REGION",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_ARN",
        ):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", self.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key or self.secret_key)
        monkeypatch.setenv("AWS_REGION", REGION)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", self.endpoint)


def _populate(server: MotoS3) -> None:
    s3 = server.client()
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=BLOB_KEY, Body=server.blob)
    s3.put_object(Bucket=BUCKET, Key=ODD_KEY, Body=server.odd)
    for key in ("tree/", "tree/a.txt", "tree/sub/b.txt", "tree/sub/deeper/c.txt", "tree/other/"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode() if not key.endswith("/") else b"")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=BUCKET, Key=f"many/k{i:05d}", Body=b"x" * (i % 7)), range(MANY)))


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    """moto's S3 server in a subprocess, with IAM authentication on and a populated bucket."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "inf"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"moto server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if _http("GET", f"{endpoint}/moto-api/data.json")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"moto server did not answer within 60s: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)

        # An IAM user allowed everything on S3, while authentication is still off.
        bootstrap = MotoS3(endpoint, "AKIAIOSFODNN7EXAMPLE", "bootstrap", b"", b"", process, "")
        iam = bootstrap.client("iam")
        user_arn = iam.create_user(UserName="dffs")["User"]["Arn"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="dffs", PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        assume = {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}
        iam.put_user_policy(
            UserName="dffs",
            PolicyName="assume",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [assume]}),
        )
        key = iam.create_access_key(UserName="dffs")["AccessKey"]
        # A role to assume, for temporary credentials with a session token.
        trust = {"Effect": "Allow", "Principal": {"AWS": user_arn}, "Action": "sts:AssumeRole"}
        role_arn = iam.create_role(
            RoleName="dffs-reader", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]})
        )["Role"]["Arn"]
        iam.put_role_policy(RoleName="dffs-reader", PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        # From now on moto verifies every request's SigV4 signature.
        status, body = _http("POST", f"{endpoint}/moto-api/reset-auth", b"0")
        assert status == 200, body

        rng = random.Random(1)
        server = MotoS3(
            endpoint,
            key["AccessKeyId"],
            key["SecretAccessKey"],
            blob=rng.randbytes(5 * 1024 * 1024 + 4321),
            odd=rng.randbytes(1000),
            process=process,
            role_arn=role_arn,
        )
        _populate(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()


@pytest.fixture
def s3(moto_s3, monkeypatch):
    moto_s3.env(monkeypatch)
    return moto_s3
