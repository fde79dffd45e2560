"""Where models, data, reports and registries live: local paths, package:// resources and s3:// objects.

S3 is used through boto3 exactly as against AWS: credentials from the standard AWS chain, the endpoint
from AWS_ENDPOINT_URL (MinIO, Ceph, R2, ...). Every storage problem becomes a one-line InvalidInputError
naming the URI."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kompress.jobs.errors import InvalidInputError, RuntimeFailure


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str, field: str | None = None) -> S3Uri:
        rest = uri[len("s3://") :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise InvalidInputError(f"{uri!r} has no bucket (expected s3://bucket/key)", field=field)
        return cls(bucket, key)

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def resolve_local(uri: str, field: str | None = None) -> Path:
    """A local path for file://, package:// or plain paths (relative to the working directory)."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if uri.startswith("package://"):
        package, _, inner = uri[len("package://") :].partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            raise InvalidInputError(f"{uri!r}: Python package {package!r} is not installed", field=field)
        return Path(next(iter(spec.submodule_search_locations))) / inner
    if "://" in uri:
        raise InvalidInputError(f"{uri!r}: unsupported scheme (use a path, file://, package:// or s3://)",
                                field=field)
    return Path(uri).expanduser()


S3_ATTEMPTS = 5
"""Attempts per S3 call (botocore's standard retry mode: exponential backoff with jitter on throttling, 5xx,
timeouts and refused connections). What still fails after them is reported as transient (exit 4): the Job
controller starts another pod later, which is how a longer outage is bridged."""


def _config() -> Any:
    from botocore.config import Config

    return Config(connect_timeout=5, read_timeout=120, retries={"total_max_attempts": S3_ATTEMPTS, "mode": "standard"},
                  s3={"addressing_style": "path"})


_override: contextvars.ContextVar[Any] = contextvars.ContextVar("kompress_s3_client", default=None)


def s3_client() -> Any:
    """The client for this context: one made by ``credentials()`` if active, else the standard AWS chain."""
    return _override.get() or _default_client()


@functools.lru_cache(maxsize=1)
def _default_client() -> Any:
    import boto3

    return boto3.client("s3", config=_config())


s3_client.cache_clear = _default_client.cache_clear  # type: ignore[attr-defined]


@contextlib.contextmanager
def credentials(values: dict[str, str]) -> Iterator[None]:
    """Use these AWS_* values (e.g. from a Kubernetes Secret) instead of the process's chain, in this context."""
    import boto3

    client = boto3.client(
        "s3", config=_config(), aws_access_key_id=values.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=values.get("AWS_SECRET_ACCESS_KEY"), aws_session_token=values.get("AWS_SESSION_TOKEN"),
        endpoint_url=values.get("AWS_ENDPOINT_URL") or values.get("AWS_ENDPOINT_URL_S3") or None,
        region_name=values.get("AWS_DEFAULT_REGION") or values.get("AWS_REGION") or "us-east-1")
    token = _override.set(client)
    try:
        yield
    finally:
        _override.reset(token)


# S3 error codes no retry can fix, with what to tell the user
PERMANENT_CODES = {
    "NoSuchKey": "does not exist", "404": "does not exist", "NotFound": "does not exist",
    "NoSuchBucket": "bucket does not exist",
    "AccessDenied": "access denied", "403": "access denied", "InvalidAccessKeyId": "access denied",
    "SignatureDoesNotMatch": "access denied", "AllAccessDisabled": "access denied",
    "InvalidBucketName": "invalid bucket name", "KeyTooLongError": "key too long",
}
# S3 error codes a later attempt may get past (besides any 5xx): throttling and timeouts
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded",
                   "TooManyRequestsException", "ServiceUnavailable", "InternalError", "XMinioServerNotInitialized"}


class TransientStorageError(RuntimeFailure):
    """S3 could not be reached or answered with a server error after every retry: a later attempt may work
    (exit 4: the Job controller retries the pod)."""


def classify_client_error(uri: str, code: str, status: int | None, detail: str,
                          field: str | None) -> InvalidInputError | RuntimeFailure:
    """The error a failed S3 call becomes: permanent ones name the field and the S3 code (exit 2), transient
    ones say a retry may help (exit 4)."""
    if code in PERMANENT_CODES:
        return InvalidInputError(f"{uri}: {PERMANENT_CODES[code]} (S3 {code})", field=field)
    if code in TRANSIENT_CODES or (status is not None and status >= 500):
        return TransientStorageError(f"{uri}: S3 answered {code or status} after {S3_ATTEMPTS} attempts "
                                     f"(transient; a retry may succeed): {detail}", field=field)
    return InvalidInputError(f"{uri}: S3 refused the request ({code or status}): {detail}", field=field)


@contextlib.contextmanager
def s3_errors(uri: str, field: str | None = None) -> Iterator[None]:
    """Turn botocore's exceptions into one-line errors that name the URI and the field: permanent ones (no
    such bucket or key, access denied, a malformed request) exit 2, transient ones (unreachable endpoint,
    timeouts, throttling, 5xx, after botocore's retries) exit 4 so the Job controller retries the pod."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ParamValidationError,
        ReadTimeoutError,
    )

    try:
        yield
    except (EndpointConnectionError, ConnectTimeoutError) as err:
        endpoint = urllib.parse.urlsplit(str(err.kwargs.get("endpoint_url", "")))
        raise TransientStorageError(f"{uri}: cannot reach the S3 endpoint {endpoint.scheme}://{endpoint.netloc} "
                                    f"after {S3_ATTEMPTS} attempts (transient; check AWS_ENDPOINT_URL if it "
                                    "persists)", field=field) from None
    except (ReadTimeoutError, ConnectionClosedError) as err:
        raise TransientStorageError(f"{uri}: the S3 connection failed after {S3_ATTEMPTS} attempts (transient): "
                                    f"{err}", field=field) from None
    except NoCredentialsError:
        raise InvalidInputError(f"{uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                                "a profile, or a role)", field=field) from None
    except ParamValidationError as err:
        raise InvalidInputError(f"{uri}: {err}", field=field) from None
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = str(err.response.get("Error", {}).get("Message", "")) or str(err)
        raise classify_client_error(uri, code, status, detail, field) from None


def _missing(err: Exception) -> bool:
    """A HEAD that says the key is not there (the URI may name a prefix instead)."""
    from botocore.exceptions import ClientError

    return isinstance(err, ClientError) and str(err.response.get("Error", {}).get("Code", "")) in (
        "404", "NoSuchKey", "NotFound")


def fetch(uri: str, dest: Path, field: str | None = None) -> Path:
    """Make ``uri`` available locally: a local path is returned as is; an S3 object or prefix is downloaded
    under ``dest`` (a prefix becomes a folder)."""
    if not is_s3(uri):
        path = resolve_local(uri, field)
        if not path.exists():
            raise InvalidInputError(f"{uri} does not exist", field=field)
        return path
    loc = S3Uri.parse(uri, field)
    client = s3_client()
    with s3_errors(uri, field):
        if loc.key and not loc.key.endswith("/"):
            try:
                client.head_object(Bucket=loc.bucket, Key=loc.key)
            except Exception as err:
                if not _missing(err):  # access denied, an outage...: the real cause, not "does not exist"
                    raise
            else:
                target = dest / Path(loc.key).name
                _download(client, loc.bucket, loc.key, target)
                return target
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        keys = [obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=loc.bucket, Prefix=prefix) for obj in page.get("Contents", [])]
        if not keys:
            raise InvalidInputError(f"{uri} does not exist (no object and no objects under the prefix)",
                                    field=field)
        folder = dest / (Path(prefix.rstrip("/")).name or loc.bucket)
        for key in keys:
            if not key.endswith("/"):
                _download(client, loc.bucket, key, _inside(folder, key[len(prefix) :], uri, field))
        return folder


def _inside(folder: Path, rel: str, uri: str, field: str | None) -> Path:
    """`folder / rel` for an object key under a prefix, refusing keys that would land outside `folder`
    (`..` segments, an absolute path, a backslash or NUL): S3 keys are any string, the workspace is a disk."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("..", ".") for p in parts) or "\\" in rel or "\0" in rel:
        raise InvalidInputError(f"{uri}: refusing object key {rel!r} under the prefix (it would be written "
                                "outside the download folder)", field=field)
    target = folder / rel
    if not target.resolve().is_relative_to(folder.resolve()):
        raise InvalidInputError(f"{uri}: refusing object key {rel!r} (outside the download folder)", field=field)
    return target


def _download(client: Any, bucket: str, key: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    client.download_file(bucket, key, str(partial))
    partial.replace(target)


class Store:
    """A folder-like place (local folder or S3 prefix) that the registry and report upload write to."""

    uri: str

    def read(self, rel: str) -> bytes | None: ...
    def write(self, rel: str, data: bytes) -> None: ...
    def put_file(self, rel: str, path: Path) -> None:
        """Copy a local file to ``rel`` (whole or not at all), without reading it into memory."""
        raise NotImplementedError
    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` only if it does not exist; True when this call created it."""
        raise NotImplementedError
    def list(self, rel: str) -> list[str]:
        """Names directly under ``rel`` (files and folders)."""
        raise NotImplementedError
    def publish(self, files: dict[str, Path | str], manifest: bytes, manifest_name: str, rel: str) -> None:
        """Publish ``files`` (name -> local path or s3:// URI) and the manifest under ``rel`` so that a version
        with a manifest is whole: local, one rename of a staged folder; S3, the manifest last. S3 sources are
        copied server-side into an S3 store (never through this process)."""
        ...
    def delete_tree(self, rel: str) -> None: ...


class LocalStore(Store):
    """A local folder. What it publishes is world-readable (files 0644, folders 0755) whatever the umask, so
    a model server running as another user can read the registry; temp files would otherwise be 0600/0700."""

    FILE_MODE = 0o644
    DIR_MODE = 0o755

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def _makedirs(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents as DIR_MODE; existing folders are left as they are."""
        missing = []
        while not folder.is_dir() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue  # another writer made it (or a file is in the way: the next step reports that)
            os.chmod(d, self.DIR_MODE)

    def read(self, rel: str) -> bytes | None:
        p = self.root / rel
        return p.read_bytes() if p.is_file() else None

    def write(self, rel: str, data: bytes) -> None:
        self._replace(rel, lambda tmp: Path(tmp).write_bytes(data))

    def put_file(self, rel: str, path: Path) -> None:
        self._replace(rel, lambda tmp: shutil.copyfile(path, tmp))

    def _replace(self, rel: str, fill: Callable[[str], object]) -> None:
        """Write through a temporary file beside the target, readable by other users, then rename: a reader
        sees the old file or the new one, never half of one."""
        p = self.root / rel
        self._makedirs(p.parent)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
        os.close(fd)
        try:
            fill(tmp)
            os.chmod(tmp, self.FILE_MODE)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        p = self.root / rel
        self._makedirs(p.parent)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.FILE_MODE)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), self.FILE_MODE)  # the mode given to open is narrowed by the umask
            f.write(data)
        return True

    def list(self, rel: str) -> list[str]:
        p = self.root / rel
        return sorted(x.name for x in p.iterdir()) if p.is_dir() else []

    def publish(self, files: dict[str, Path | str], manifest: bytes, manifest_name: str, rel: str) -> None:
        target = self.root / rel
        self._makedirs(target.parent)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".staging-{target.name}-"))
        try:
            os.chmod(staging, self.DIR_MODE)
            for name, src in files.items():
                if isinstance(src, str):  # an S3 object into a local registry: download it
                    fetched = fetch(src, staging / f".{name}.fetch", field="modelUri")
                    fetched.replace(staging / name)
                    shutil.rmtree(staging / f".{name}.fetch", ignore_errors=True)
                else:
                    shutil.copy2(src, staging / name)
            (staging / manifest_name).write_bytes(manifest)
            for f in staging.iterdir():
                os.chmod(f, self.FILE_MODE)
            os.rename(staging, target)  # atomic; fails if the target exists and is not empty
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def delete_tree(self, rel: str) -> None:
        shutil.rmtree(self.root / rel, ignore_errors=True)


class S3Store(Store):
    def __init__(self, uri: str, field: str | None = None) -> None:
        self.loc = S3Uri.parse(uri, field)
        self.uri = str(self.loc).rstrip("/")
        self.field = field
        self.client = s3_client()  # bound at creation: the credentials of the context that opened it

    def _key(self, rel: str) -> str:
        return self.loc.join(rel).key

    def read(self, rel: str) -> bytes | None:
        from botocore.exceptions import ClientError

        with s3_errors(f"{self.uri}/{rel}", self.field):
            try:
                return self.client.get_object(Bucket=self.loc.bucket, Key=self._key(rel))["Body"].read()
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

    def write(self, rel: str, data: bytes) -> None:
        with s3_errors(f"{self.uri}/{rel}", self.field):
            self.client.put_object(Bucket=self.loc.bucket, Key=self._key(rel), Body=data)

    def put_file(self, rel: str, path: Path) -> None:
        with s3_errors(f"{self.uri}/{rel}", self.field):
            self.client.upload_file(str(path), self.loc.bucket, self._key(rel))  # multipart for large files

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        with s3_errors(f"{self.uri}/{rel}", self.field):
            try:
                self.client.put_object(Bucket=self.loc.bucket, Key=self._key(rel), Body=data, IfNoneMatch="*")
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise
        return True

    def list(self, rel: str) -> list[str]:
        prefix = self._key(rel).rstrip("/") + "/" if self._key(rel) else ""
        names: set[str] = set()
        with s3_errors(f"{self.uri}/{rel}", self.field):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.loc.bucket, Prefix=prefix, Delimiter="/"):
                names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
                names.update(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        return sorted(n for n in names if n)

    def publish(self, files: dict[str, Path | str], manifest: bytes, manifest_name: str, rel: str) -> None:
        # S3 has no rename: the model files first and the manifest last, so a version with a manifest is always
        # whole. Each object appears atomically.
        for name, src in files.items():
            if isinstance(src, str):
                self.copy_object(src, f"{rel}/{name}")
            else:
                self.put_file(f"{rel}/{name}", src)
        self.write(f"{rel}/{manifest_name}", manifest)

    def copy_object(self, source_uri: str, rel: str) -> None:
        """A server-side copy (CopyObject; UploadPartCopy parts above the multipart threshold, as S3 requires
        beyond 5 GB): the bytes never pass through this process."""
        from boto3.s3.transfer import TransferConfig

        src = S3Uri.parse(source_uri, "modelUri")
        # one CopyObject up to 1 GB; beyond, 512 MB parts (S3 allows one CopyObject up to 5 GB, 10000 parts)
        config = TransferConfig(multipart_threshold=1 << 30, multipart_chunksize=1 << 29, max_concurrency=4)
        with s3_errors(source_uri, "modelUri"):
            self.client.copy({"Bucket": src.bucket, "Key": src.key}, self.loc.bucket, self._key(rel), Config=config)

    def delete_tree(self, rel: str) -> None:
        prefix = self._key(rel).rstrip("/") + "/"
        with s3_errors(f"{self.uri}/{rel}", self.field):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.loc.bucket,
                                                                              Prefix=prefix):
                for obj in page.get("Contents", []):
                    self.client.delete_object(Bucket=self.loc.bucket, Key=obj["Key"])


def open_store(uri: str, field: str | None = None) -> Store:
    return S3Store(uri, field) if is_s3(uri) else LocalStore(resolve_local(uri, field))
