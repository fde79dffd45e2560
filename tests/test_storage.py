"""Storage against a real S3-compatible server: fetch files and prefixes, clear errors for bad locations."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kompress.jobs import storage
from kompress.jobs.errors import InvalidInputError

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


def test_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage.s3_client.cache_clear()
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="cannot reach the S3 endpoint"):
        storage.fetch("s3://bucket/model.onnx", tmp_path)
    assert time.monotonic() - started < 30
    storage.s3_client.cache_clear()


def test_local_and_package_uris(tmp_path: Path) -> None:
    assert storage.resolve_local("package://kompress.jobs/datasets/digits-eval.npz").is_file()
    with pytest.raises(InvalidInputError, match="not installed"):
        storage.resolve_local("package://no_such_package_xyz/file")
    with pytest.raises(InvalidInputError, match="unsupported scheme"):
        storage.resolve_local("gs://bucket/model.onnx")
    with pytest.raises(InvalidInputError, match="does not exist"):
        storage.fetch(str(tmp_path / "absent.onnx"), tmp_path)
