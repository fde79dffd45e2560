"""Registry promotion: atomic, idempotent, versioned, Triton layout — locally and in a real S3 server."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from kompress.jobs import registry
from kompress.jobs.data import InputSpec

INPUTS = [InputSpec("pixels", "tensor(float)", ("batch", 1, 8, 8))]
OUTPUTS = [InputSpec("logits", "tensor(float)", ("batch", 10))]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    f = tmp_path / "built" / "model.onnx"
    f.parent.mkdir()
    f.write_bytes(b"onnx-bytes" * 100)
    return f


def promote(uri: str, model_file: Path, key: str) -> registry.Promotion:
    return registry.promote(uri, "digits", model_file, {"name": "t"}, key, INPUTS, OUTPUTS)


def check_layout(read: Any, version: int, key: str) -> None:
    manifest = json.loads(read(f"digits/{version}/kompress.json"))
    assert manifest["promotionKey"] == key and manifest["version"] == version
    assert read(f"digits/{version}/model.onnx") == b"onnx-bytes" * 100
    config = read("digits/config.pbtxt").decode()
    assert 'platform: "onnxruntime_onnx"' in config and 'name: "pixels"' in config
    assert "dims: [ 1, 8, 8 ]" in config and "TYPE_FP32" in config


def test_local_promotion_is_idempotent_and_versioned(tmp_path: Path, model_file: Path) -> None:
    reg = tmp_path / "registry"
    first = promote(str(reg), model_file, "key-a")
    again = promote(str(reg), model_file, "key-a")
    other = promote(str(reg), model_file, "key-b")
    assert (first.version, first.created) == (1, True)
    assert (again.version, again.created) == (1, False)
    assert (other.version, other.created) == (2, True)
    check_layout(lambda rel: (reg / rel).read_bytes(), 1, "key-a")
    assert sorted(p.name for p in (reg / "digits").iterdir() if not p.name.startswith(".")) == [
        "1", "2", "config.pbtxt"]
    assert [v["version"] for v in registry.list_versions(str(reg), "digits")] == [1, 2]


def test_concurrent_promotions_never_share_a_version(tmp_path: Path, model_file: Path) -> None:
    reg = tmp_path / "registry"
    results: list[registry.Promotion] = []
    threads = [threading.Thread(target=lambda k=k: results.append(promote(str(reg), model_file, f"key-{k}")))
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.version for r in results) == list(range(1, 9))
    assert not [p for p in (reg / "digits").iterdir() if p.name.startswith(".staging")]


def test_interrupted_promotion_is_completed_not_duplicated(tmp_path: Path, model_file: Path) -> None:
    reg = tmp_path / "registry"
    # a crash after claiming version 1 and before publishing it
    (reg / "digits" / ".claims").mkdir(parents=True)
    (reg / "digits" / ".claims" / "1").write_text("key-a")
    result = promote(str(reg), model_file, "key-a")
    assert (result.version, result.created) == (1, True)
    assert registry.find_existing(registry.open_store(str(reg)), "digits", "key-a") == 1


@pytest.mark.s3
def test_s3_promotion_is_idempotent_and_versioned(s3: Any, model_file: Path) -> None:
    s3.create_bucket(Bucket="registry-test")
    uri = "s3://registry-test/models"
    first = promote(uri, model_file, "key-a")
    again = promote(uri, model_file, "key-a")
    other = promote(uri, model_file, "key-b")
    assert [(p.version, p.created) for p in (first, again, other)] == [(1, True), (1, False), (2, True)]
    assert first.uri == "s3://registry-test/models/digits/1"

    def read(rel: str) -> bytes:
        return s3.get_object(Bucket="registry-test", Key=f"models/{rel}")["Body"].read()

    check_layout(read, 1, "key-a")
    # two writers racing for the same number: the conditional write lets exactly one win
    store = registry.open_store(uri)
    assert store.create_exclusive("digits/.claims/3", b"x") is True
    assert store.create_exclusive("digits/.claims/3", b"y") is False
    assert promote(uri, model_file, "key-c").version == 4
