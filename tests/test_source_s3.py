"""The s3:// Source against a real S3-protocol server: moto's standalone server.

There is no MinIO on this machine; moto (``moto[server]``, started here as
``python -m moto.server -H 127.0.0.1 -p PORT`` in a subprocess) is the
S3-protocol server it can run. It is a real HTTP server speaking the S3 REST
API, so requests go through dffs's own HTTP client exactly as they would to
AWS. moto only checks SigV4 signatures when its IAM authentication is on, so
the fixture creates an IAM user and access key through moto's IAM API, then
turns authentication on (``/moto-api/reset-auth``): from then on a request
with a wrong signature is refused with 403 SignatureDoesNotMatch, which is
how these tests know our requests really are signed (and that the Host,
path and query we sign are exactly what goes on the wire).

Buckets and objects are made with botocore's own client (a real AWS SDK
client), and the dffs side finds its credentials, endpoint and region in the
standard AWS environment variables, set per test with monkeypatch.
"""

from __future__ import annotations

import functools
import hashlib
import time

import pytest
import trio
from cli import assert_one_line_error, run_dffs, sha256_file
from s3_server import BLOB_KEY, BUCKET, MANY, ODD_KEY

from dffs.errors import SourceChanged, SourceError, UsageError
from dffs.source import SourceRegistry, Validators
from dffs.source.http import HttpSource
from dffs.source.s3 import S3Source, canonical_query, load_config, parse_list_page, parse_s3_url


@pytest.fixture
async def source(s3):
    """An S3Source configured only by the environment, as SourceRegistry makes it."""
    http = HttpSource()
    src = S3Source(http=http)
    try:
        yield src
    finally:
        await http.aclose()


# ----------------------------------------------------------------- objects
async def test_stat_gives_size_etag_and_keeps_the_s3_url(s3, source):
    head = await trio.to_thread.run_sync(lambda: s3.client().head_object(Bucket=BUCKET, Key=BLOB_KEY))
    st = await source.stat(f"s3://{BUCKET}/{BLOB_KEY}")
    assert st.content_length == len(s3.blob)
    assert st.etag == head["ETag"] == f'"{hashlib.md5(s3.blob).hexdigest()}"'
    assert st.last_modified
    assert st.url == f"s3://{BUCKET}/{BLOB_KEY}"  # reads go back through S3Source, signed
    assert st.accepts_ranges


async def test_read_range_returns_exact_bytes(s3, source):
    size = len(s3.blob)
    url = f"s3://{BUCKET}/{BLOB_KEY}"
    for offset, length in [
        (0, 1),
        (0, 4096),
        (1, 100),
        (1024 * 1024 - 7, 70000),
        (size - 10, 10),
        (size - 1, 1),
        (0, size),
    ]:
        buffer = bytearray(length)
        await source.read_range(url, offset, memoryview(buffer))
        assert buffer == s3.blob[offset : offset + length], (offset, length)


async def test_keys_with_reserved_characters_are_encoded_as_signed(s3, source):
    url = f"s3://{BUCKET}/{ODD_KEY}"
    st = await source.stat(url)
    assert st.content_length == len(s3.odd)
    buffer = bytearray(len(s3.odd) - 3)
    await source.read_range(url, 3, memoryview(buffer))
    assert buffer == s3.odd[3:]


async def test_open_stream_from_an_offset(s3, source):
    for offset in (0, 12345):
        got = bytearray()
        async with source.open_stream(f"s3://{BUCKET}/{BLOB_KEY}", offset) as body:
            chunk = memoryview(bytearray(256 * 1024))
            while n := await body.readinto(chunk):
                got += chunk[:n]
        assert got == s3.blob[offset:]


async def test_conditional_stat_and_reads_pinned_to_the_etag(s3, source):
    client = s3.client()
    key, url = "data/changing", f"s3://{BUCKET}/data/changing"
    await trio.to_thread.run_sync(lambda: client.put_object(Bucket=BUCKET, Key=key, Body=b"first version"))
    st = await source.stat(url)
    again = await source.stat(url, validators=Validators(etag=st.etag))
    assert again.not_modified and again.etag == st.etag
    buffer = bytearray(5)
    await source.read_range(url, 0, memoryview(buffer), validators=Validators(etag=st.etag))
    assert buffer == b"first"

    await trio.to_thread.run_sync(lambda: client.put_object(Bucket=BUCKET, Key=key, Body=b"SECOND VERSION"))
    changed = await source.stat(url, validators=Validators(etag=st.etag))
    assert not changed.not_modified and changed.etag != st.etag
    with pytest.raises(SourceChanged, match=r"s3://dffs-test/data/changing: S3 answered 412 PreconditionFailed"):
        await source.read_range(url, 0, memoryview(bytearray(5)), validators=Validators(etag=st.etag))


async def test_dffs_get_downloads_an_s3_object(s3, tmp_path):
    out = tmp_path / "out.bin"
    url = f"s3://{BUCKET}/{BLOB_KEY}"
    result = await trio.to_thread.run_sync(
        lambda: run_dffs("get", url, "-O", str(out), "--data-dir", str(tmp_path / "data"))
    )
    assert result.returncode == 0, result.stderr
    assert sha256_file(out) == hashlib.sha256(s3.blob).hexdigest()


async def test_dffs_get_missing_key_is_one_line_error(s3, tmp_path):
    result = await trio.to_thread.run_sync(
        lambda: run_dffs(
            "get", f"s3://{BUCKET}/no/such/key", "-O", str(tmp_path / "o"), "--data-dir", str(tmp_path / "d")
        )
    )
    assert_one_line_error(result, 1, "NoSuchKey")


# ----------------------------------------------------------------- listing
async def _names(source, url):
    return {(e.name, e.is_dir): e async for e in source.list(url)}


async def test_list_nested_prefixes(s3, source):
    entries = await _names(source, f"s3://{BUCKET}/tree/")
    assert set(entries) == {("a.txt", False), ("sub", True), ("other", True)}  # the "tree/" marker is skipped
    a = entries[("a.txt", False)]
    assert a.url == f"s3://{BUCKET}/tree/a.txt" and a.size == len(b"tree/a.txt")
    assert a.etag == f'"{hashlib.md5(b"tree/a.txt").hexdigest()}"'
    assert abs(a.mtime - time.time()) < 3600
    assert entries[("sub", True)].url == f"s3://{BUCKET}/tree/sub/"

    assert set(await _names(source, f"s3://{BUCKET}/tree")) == set(entries)  # no slash: the same prefix
    assert set(await _names(source, f"s3://{BUCKET}/tree/sub/")) == {("b.txt", False), ("deeper", True)}
    assert set(await _names(source, f"s3://{BUCKET}/tree/sub/deeper/")) == {("c.txt", False)}
    assert set(await _names(source, f"s3://{BUCKET}/")) == {
        ("data", True),
        ("many", True),
        ("odd name", True),
        ("tree", True),
    }
    assert set(await _names(source, f"s3://{BUCKET}")) == set(await _names(source, f"s3://{BUCKET}/"))
    assert await _names(source, f"s3://{BUCKET}/nothing-here/") == {}


async def test_list_follows_continuation_tokens(s3, source):
    entries = [e async for e in source.list(f"s3://{BUCKET}/many/")]
    assert len(entries) == MANY
    assert sorted(e.name for e in entries) == [f"k{i:05d}" for i in range(MANY)]
    assert all(e.size == int(e.name[1:]) % 7 and not e.is_dir for e in entries)


async def test_listed_urls_can_be_read(s3, source):
    entries = [e async for e in source.list(f"s3://{BUCKET}/odd name/")]
    assert [e.name for e in entries] == [ODD_KEY.partition("/")[2]]
    st = await source.stat(entries[0].url)
    assert st.content_length == len(s3.odd)


# ------------------------------------------------------------------ errors
async def test_wrong_secret_key_is_refused_by_the_signature_check(s3, monkeypatch):
    s3.env(monkeypatch, secret_key="not-the-secret")
    async with _closing(S3Source()) as source:
        with pytest.raises(
            SourceError, match=r"^s3://dffs-test/data/blob\.bin: S3 answered 403 SignatureDoesNotMatch"
        ) as info:
            await source.stat(f"s3://{BUCKET}/{BLOB_KEY}")
        assert "\n" not in str(info.value) and "127.0.0.1" not in str(info.value)
        with pytest.raises(SourceError, match="403 SignatureDoesNotMatch"):
            await source.read_range(f"s3://{BUCKET}/{BLOB_KEY}", 0, memoryview(bytearray(10)))
        with pytest.raises(SourceError, match="403 SignatureDoesNotMatch"):
            await _names(source, f"s3://{BUCKET}/tree/")


async def test_wrong_secret_key_fails_dffs_get_in_one_line(s3, monkeypatch, tmp_path):
    s3.env(monkeypatch, secret_key="not-the-secret")
    result = await trio.to_thread.run_sync(
        lambda: run_dffs(
            "get", f"s3://{BUCKET}/{BLOB_KEY}", "-O", str(tmp_path / "o"), "--data-dir", str(tmp_path / "d")
        )
    )
    assert_one_line_error(result, 1, "SignatureDoesNotMatch")


async def test_session_token_credentials_are_signed(s3, monkeypatch):
    """Temporary credentials from STS AssumeRole: the token travels as a signed x-amz-security-token."""
    sts = s3.client("sts")
    creds = (await trio.to_thread.run_sync(lambda: sts.assume_role(RoleArn=s3.role_arn, RoleSessionName="dffs-test")))[
        "Credentials"
    ]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", creds["SessionToken"])
    async with _closing(S3Source()) as source:
        assert (await source.stat(f"s3://{BUCKET}/{BLOB_KEY}")).content_length == len(s3.blob)
        buffer = bytearray(1000)
        await source.read_range(f"s3://{BUCKET}/{BLOB_KEY}", 77, memoryview(buffer))
        assert buffer == s3.blob[77:1077]
    monkeypatch.setenv("AWS_SESSION_TOKEN", "not-the-token")
    async with _closing(S3Source()) as source:
        with pytest.raises(SourceError, match="400 InvalidToken"):
            await source.stat(f"s3://{BUCKET}/{BLOB_KEY}")


async def test_unknown_access_key(s3, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    async with _closing(S3Source()) as source:
        with pytest.raises(SourceError, match="403 InvalidAccessKeyId"):
            await source.stat(f"s3://{BUCKET}/{BLOB_KEY}")


async def test_no_such_key_and_no_such_bucket(s3, source):
    with pytest.raises(SourceError, match=r"^s3://dffs-test/missing\.bin: S3 answered 404 NoSuchKey") as info:
        await source.stat(f"s3://{BUCKET}/missing.bin")
    assert info.value.status == 404
    with pytest.raises(SourceError, match="404 NoSuchKey"):
        await source.read_range(f"s3://{BUCKET}/missing.bin", 0, memoryview(bytearray(1)))
    with pytest.raises(SourceError, match="404 NoSuchKey"):
        async with source.open_stream(f"s3://{BUCKET}/missing.bin"):
            pass
    with pytest.raises(SourceError, match=r"^s3://no-such-bucket/k: S3 answered 404 NoSuchBucket"):
        await source.stat("s3://no-such-bucket/k")
    with pytest.raises(SourceError, match=r"^s3://no-such-bucket/p/: S3 answered 404 NoSuchBucket"):
        await _names(source, "s3://no-such-bucket/p/")


async def test_wrong_region_names_the_buckets_region(nursery):
    """AWS answers path-style requests to the wrong region with 301 PermanentRedirect
    and no Location (moto does not): the error says where the bucket is."""
    document = (
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PermanentRedirect</Code>"
        b"<Message>The bucket you are attempting to access must be addressed using the specified endpoint."
        b"</Message><Endpoint>s3.eu-west-1.amazonaws.com</Endpoint><Bucket>b</Bucket></Error>"
    )
    methods: list[str] = []

    async def handler(stream):
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            method = head.split(b" ", 1)[0].decode()
            methods.append(method)
            await stream.send_all(
                b"HTTP/1.1 301 Moved Permanently\r\nx-amz-bucket-region: eu-west-1\r\n"
                b"Content-Type: application/xml\r\nContent-Length: %d\r\n\r\n"
                % len(document)
                + (b"" if method == "HEAD" else document)
            )

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    source = S3Source(endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", credentials=("AK", "SK"))
    try:
        with pytest.raises(
            SourceError, match=r"^s3://b/k: S3 answered 301 PermanentRedirect: .*set AWS_REGION=eu-west-1\)$"
        ):
            await source.stat("s3://b/k")
        assert methods == ["HEAD", "GET"]  # the failed HEAD, then a one-byte GET for the reason
        with pytest.raises(SourceError, match="301 PermanentRedirect.*AWS_REGION=eu-west-1"):
            await _names(source, "s3://b/")
    finally:
        await source.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///key",
        "s3://bad bucket/key",
        "s3://bucket:80/key",
        "s3://user@bucket/k",
        "s3:/bucket/key",
        "s3://bucket/a\nb",
    ],
)
async def test_malformed_urls_are_usage_errors(url):
    registry = SourceRegistry()
    try:
        with pytest.raises(UsageError, match="malformed"):
            registry.validate(url)
        with pytest.raises(UsageError):
            await registry.for_url("s3://b/k").stat(url)
    finally:
        await registry.aclose()


async def test_object_operations_need_a_key():
    source = S3Source(endpoint_url="http://127.0.0.1:9", credentials=("AK", "SK"))
    for url in ("s3://bucket", "s3://bucket/"):
        parse_s3_url(url)  # a bucket is a fine thing to list
        with pytest.raises(UsageError, match="no object key"):
            await source.stat(url)
        with pytest.raises(UsageError, match="no object key"):
            await source.read_range(url, 0, memoryview(bytearray(1)))
    await source.aclose()


def test_dffs_get_malformed_s3_url_is_usage_error(tmp_path):
    result = run_dffs("get", "s3:///key", "-O", str(tmp_path / "o"), "--data-dir", str(tmp_path / "d"))
    assert_one_line_error(result, 2, "no bucket")


# ------------------------------------------------- signing and configuration
async def test_signs_only_the_minimal_header_set():
    source = S3Source(endpoint_url="http://127.0.0.1:9000", region="eu-west-1", credentials=("AKID", "SECRET", "TOKEN"))
    headers = await source._sign(
        "GET",
        "http://127.0.0.1:9000/b/k",
        {"Range": "bytes=0-9", "x-amz-request-payer": "requester", "Authorization": "stale", "User-Agent": "x"},
    )
    auth = headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKID/") and "/eu-west-1/s3/aws4_request" in auth
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-request-payer;x-amz-security-token," in auth
    assert headers["X-Amz-Security-Token"] == "TOKEN"
    assert headers["Range"] == "bytes=0-9" and headers["User-Agent"] == "x"  # passed on, unsigned
    assert not any(name.lower() == "host" for name in headers)  # HttpSource sends Host itself
    await source.aclose()


async def test_missing_credentials_send_unsigned_requests(monkeypatch, tmp_path):
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    source = S3Source(endpoint_url="http://127.0.0.1:9000")
    assert (await source.config()).credentials is None
    assert await source._sign("GET", "http://127.0.0.1:9000/b/k", {"Range": "bytes=0-0"}) == {"Range": "bytes=0-0"}
    await source.aclose()


def test_config_from_environment_and_profiles(monkeypatch, tmp_path):
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    config_file, creds_file = tmp_path / "config", tmp_path / "credentials"
    config_file.write_text(
        "[default]\nregion = eu-central-1\n\n"
        "[profile minio]\nregion = ap-south-1\nendpoint_url = http://minio.local:9000/\n"
    )
    creds_file.write_text(
        "[default]\naws_access_key_id = DEFAULTKEY\naws_secret_access_key = s1\n\n"
        "[minio]\naws_access_key_id = MINIOKEY\naws_secret_access_key = s2\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_file))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds_file))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    config = load_config()
    assert (config.region, config.endpoint) == ("eu-central-1", "https://s3.eu-central-1.amazonaws.com")
    assert config.credentials.access_key == "DEFAULTKEY"

    monkeypatch.setenv("AWS_PROFILE", "minio")
    config = load_config()
    assert (config.region, config.endpoint) == ("ap-south-1", "http://minio.local:9000")
    assert config.credentials.access_key == "MINIOKEY"

    monkeypatch.setenv("AWS_REGION", "us-west-2")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://global:1")
    assert load_config().endpoint == "http://global:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3")
    config = load_config()
    assert (config.region, config.endpoint, config.credentials.access_key) == ("us-west-2", "http://s3only:2", "ENVKEY")
    config = load_config(endpoint_url="http://override:3", region="sa-east-1", credentials=("K", "S"))
    assert (config.region, config.endpoint, config.credentials.access_key) == ("sa-east-1", "http://override:3", "K")

    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(UsageError, match="nope"):
        load_config()


def test_canonical_query_is_sorted_and_rfc3986_encoded():
    assert canonical_query({"prefix": "a b/c+d~", "list-type": "2", "delimiter": "/"}) == (
        "delimiter=%2F&list-type=2&prefix=a%20b%2Fc%2Bd~"
    )


def test_list_page_parsing_with_and_without_namespace():
    body = (
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IsTruncated>true</IsTruncated>'
        b"<NextContinuationToken>tok/+=</NextContinuationToken>"
        b"<Contents><Key>p/</Key><Size>0</Size></Contents>"
        b"<Contents><Key>p/f</Key><Size>12</Size><LastModified>2024-01-02T03:04:05.000Z</LastModified>"
        b"<ETag>&quot;abc&quot;</ETag></Contents>"
        b"<CommonPrefixes><Prefix>p/d/</Prefix></CommonPrefixes></ListBucketResult>"
    )
    page = parse_list_page(body, "b", "p/")
    assert page.next_token == "tok/+="
    assert [(e.name, e.url, e.is_dir, e.size, e.etag) for e in page.entries] == [
        ("f", "s3://b/p/f", False, 12, '"abc"'),
        ("d", "s3://b/p/d/", True, None, None),
    ]
    assert page.entries[0].mtime == 1704164645.0
    plain = parse_list_page(body.replace(b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', b""), "b", "p/")
    assert plain == page
    with pytest.raises(ValueError):
        parse_list_page(b"<html/>", "b", "p/")


def test_registry_routes_s3_to_an_s3_source_sharing_the_http_pool():
    registry = SourceRegistry()
    s3_source = registry.for_url("s3://bucket/key")
    assert isinstance(s3_source, S3Source)
    assert s3_source.http is registry.for_url("https://example.com/x")
    assert "s3" in registry.schemes


class _closing:
    def __init__(self, source):
        self.source = source

    async def __aenter__(self):
        return self.source

    async def __aexit__(self, *exc):
        await self.source.aclose()
