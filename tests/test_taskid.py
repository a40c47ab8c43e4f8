"""The task-ID rule: stable, and blind to volatile query parameters."""

from hypothesis import given
from hypothesis import strategies as st

from dffs.idgen import normalize_url, task_id

BASE = "https://bucket.s3.amazonaws.com/datasets/train.tar"


def test_signed_urls_for_the_same_object_share_a_task():
    a = f"{BASE}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F2026&X-Amz-Date=20261124T000000Z&X-Amz-Expires=3600&X-Amz-Signature=abc"
    b = f"{BASE}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F2026&X-Amz-Date=20261125T101010Z&X-Amz-Expires=600&X-Amz-Signature=def"
    assert task_id(a) == task_id(b) == task_id(BASE)


def test_other_signature_styles_and_containerd_ns_are_ignored():
    assert task_id(f"{BASE}?Expires=1&Signature=x&AWSAccessKeyId=k") == task_id(BASE)
    assert task_id(f"{BASE}?sig=abc&se=2026&sp=r&sv=2021") == task_id(BASE)
    assert task_id("http://127.0.0.1:4001/v2/lib/blobs/sha256:ab?ns=docker.io") == task_id(
        "http://127.0.0.1:4001/v2/lib/blobs/sha256:ab?ns=registry.local:5000"
    )


def test_meaningful_query_parameters_stay():
    assert task_id(f"{BASE}?versionId=1") != task_id(f"{BASE}?versionId=2")
    assert normalize_url(f"{BASE}?versionId=1&X-Amz-Signature=s&b=%2F") == f"{BASE}?versionId=1&b=%2F"


def test_tag_application_and_piece_length_separate_tasks():
    ids = {
        task_id(BASE),
        task_id(BASE, tag="t"),
        task_id(BASE, application="a"),
        task_id(BASE, piece_length=8 << 20),
    }
    assert len(ids) == 4
    # field boundaries matter: ("ab", "c") is not ("a", "bc")
    assert task_id(BASE, tag="ab", application="c") != task_id(BASE, tag="a", application="bc")


def test_known_value_is_stable_across_versions():
    # If this changes, peers running different dffs versions stop sharing.
    assert task_id("http://example.com/a.bin") == "51c3a99f98ba516ff67e6a1d65b5db7430b94c3516b3b914dba2b7ec302dc8c8"


def test_scheme_and_host_case_and_fragment_do_not_matter():
    assert task_id("HTTP://Example.COM/a.bin#frag") == task_id("http://example.com/a.bin")
    assert task_id("http://example.com/A.bin") != task_id("http://example.com/a.bin")


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=1, max_size=20))
def test_any_amz_parameter_is_ignored(suffix):
    assert task_id(f"{BASE}?X-Amz-{suffix}=v") == task_id(BASE)
