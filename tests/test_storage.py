"""Storage against a real S3-compatible server: fetch files and prefixes, clear errors for bad locations."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kompress.jobs.errors import InvalidInputError
from kompress.jobs.io import storage

pytestmark = pytest.mark.s3


def test_fetch_object_and_prefix(s3: Any, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="fetch-test")
    s3.put_object(Bucket="fetch-test", Key="one/model.onnx", Body=b"abc")
    s3.put_object(Bucket="fetch-test", Key="dir/config.json", Body=b"{}")
    s3.put_object(Bucket="fetch-test", Key="dir/sub/vocab.txt", Body=b"a\nb")
    f = storage.fetch("s3://fetch-test/one/model.onnx", tmp_path / "a")
    assert f.read_bytes() == b"abc" and f.name == "model.onnx"
    d = storage.fetch("s3://fetch-test/dir/", tmp_path / "b")
    assert (d / "config.json").read_bytes() == b"{}" and (d / "sub" / "vocab.txt").read_bytes() == b"a\nb"
    assert storage.fetch("s3://fetch-test/dir", tmp_path / "c").is_dir()
    assert not list(tmp_path.rglob("*.part"))


def test_missing_object_and_bucket(s3: Any, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="empty-test")
    with pytest.raises(InvalidInputError, match=r"s3://empty-test/nothing.onnx does not exist") as info:
        storage.fetch("s3://empty-test/nothing.onnx", tmp_path, field="model.uri")
    assert info.value.field == "model.uri"
    with pytest.raises(InvalidInputError, match="bucket does not exist"):
        storage.fetch("s3://no-such-bucket-here/x.onnx", tmp_path)


def test_wrong_credentials_say_access_denied_not_missing(s3: Any, s3_server: Any, tmp_path: Path) -> None:
    """A HEAD refused for the credentials is not "does not exist": the real cause, exit 2, the field named."""
    s3.create_bucket(Bucket="denied-test")
    s3.put_object(Bucket="denied-test", Key="model.onnx", Body=b"x")
    wrong = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    with storage.credentials(wrong), pytest.raises(InvalidInputError, match=r"access denied \(S3 ") as info:
        storage.fetch("s3://denied-test/model.onnx", tmp_path, field="model.uri")
    assert info.value.field == "model.uri" and "does not exist" not in str(info.value)


@pytest.mark.parametrize(("code", "status", "transient", "text"), [
    ("NoSuchKey", 404, False, "does not exist (S3 NoSuchKey)"),
    ("NoSuchBucket", 404, False, "bucket does not exist"),
    ("AccessDenied", 403, False, "access denied (S3 AccessDenied)"),
    ("InvalidAccessKeyId", 403, False, "access denied"),
    ("SlowDown", 503, True, "transient"),
    ("InternalError", 500, True, "transient"),
    ("", 502, True, "S3 answered 502"),
    ("InvalidArgument", 400, False, "S3 refused the request (InvalidArgument)"),
])
def test_s3_errors_are_permanent_or_transient(code: str, status: int, transient: bool, text: str) -> None:
    err = storage.classify_client_error("s3://b/k", code, status, "detail", "data.uri")
    assert isinstance(err, storage.TransientStorageError) == transient and text in str(err)
    assert err.exit_code == (4 if transient else 2) and err.field == "data.uri"


def test_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage.s3_client.cache_clear()
    started = time.monotonic()
    with pytest.raises(storage.TransientStorageError, match=r"cannot reach the S3 endpoint.*transient"):
        storage.fetch("s3://bucket/model.onnx", tmp_path)
    assert time.monotonic() - started < 60  # botocore's retries with backoff, then exit 4: the Job retries
    storage.s3_client.cache_clear()


def test_local_and_package_uris(tmp_path: Path) -> None:
    assert storage.resolve_local("package://kompress.jobs/datasets/digits-eval.npz").is_file()
    with pytest.raises(InvalidInputError, match="not installed"):
        storage.resolve_local("package://no_such_package_xyz/file")
    with pytest.raises(InvalidInputError, match="unsupported scheme"):
        storage.resolve_local("gs://bucket/model.onnx")
    with pytest.raises(InvalidInputError, match="does not exist"):
        storage.fetch(str(tmp_path / "absent.onnx"), tmp_path)


class _CraftedKeys:
    """An S3 client whose listing returns keys a hostile bucket could hold (MinIO refuses to store most)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys, self.downloaded = keys, []

    def head_object(self, **_: Any) -> None:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "404"}}, "HeadObject")

    def get_paginator(self, _: str) -> Any:
        keys = self.keys

        class Pages:
            def paginate(self, **_: Any) -> list[dict[str, Any]]:
                return [{"Contents": [{"Key": k} for k in keys]}]

        return Pages()

    def download_file(self, bucket: str, key: str, target: str) -> None:
        self.downloaded.append(target)
        Path(target).write_bytes(b"x")


@pytest.mark.parametrize("key", ["models/m/../../../escape.txt", "models/m//etc/passwd", "models/m/a/../../b",
                                 "models/m/..", "models/m/a\\..\\b"])
def test_keys_that_would_escape_the_download_folder_are_refused(tmp_path: Path, key: str) -> None:
    client = _CraftedKeys(["models/m/model.onnx", key])
    token = storage._override.set(client)
    try:
        with pytest.raises(InvalidInputError, match="refusing object key") as info:
            storage.fetch("s3://bucket/models/m", tmp_path / "dest", field="model.uri")
    finally:
        storage._override.reset(token)
    assert info.value.field == "model.uri"
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(tmp_path / "dest")]
    assert not outside and not (tmp_path / "escape.txt").exists()


def test_ordinary_nested_keys_still_download(tmp_path: Path) -> None:
    client = _CraftedKeys(["models/m/model.onnx", "models/m/sub/vocab.txt"])
    token = storage._override.set(client)
    try:
        folder = storage.fetch("s3://bucket/models/m", tmp_path, field="model.uri")
    finally:
        storage._override.reset(token)
    assert (folder / "sub" / "vocab.txt").read_bytes() == b"x" and (folder / "model.onnx").exists()
