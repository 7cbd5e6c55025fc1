"""The store on S3 (or any S3-compatible server): boto3 for the platform's own file operations, s3a:// for Spark.

Credentials are never passed in: boto3 and Hadoop's s3a both take them from the environment (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, or an instance role), so they cannot leak into config,
logs or metadata. Every boto3 failure becomes a StorageError naming the setting to fix.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

from ml_platform.stores.base import FileInfo, StorageError, Store

CREDENTIALS = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an instance role)"


def split_s3(uri: str) -> tuple[str, str]:
    scheme, _, rest = uri.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme not in ("s3", "s3a") or not bucket:
        raise StorageError(f"{uri!r} is not an s3://bucket/prefix URI (ML_PLATFORM_DATA)")
    return bucket, prefix.strip("/")


def explain(e: Exception, bucket: str, endpoint: str | None, what: str) -> StorageError:
    """One clear sentence for the ways S3 access fails, naming the setting to fix (never a secret)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    where = f"s3://{bucket}"
    if isinstance(e, NoCredentialsError | PartialCredentialsError):
        return StorageError(f"{what} on {where}: no AWS credentials found; set {CREDENTIALS}")
    if isinstance(e, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return StorageError(f"{what} on {where}: cannot reach the S3 endpoint {endpoint or 'of AWS'} in time ({e}); "
                            f"check ML_PLATFORM_S3_ENDPOINT and the network")
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket" or (status == 404 and code in ("404", "NotFound") and what == "checking the bucket"):
            return StorageError(f"{what}: bucket {bucket!r} does not exist; fix the bucket in ML_PLATFORM_DATA "
                                f"(s3://<bucket>/<prefix>) or create it")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return StorageError(f"{what} on {where}: the credentials were refused ({code}); fix {CREDENTIALS}")
        if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
            return StorageError(f"{what} on {where}: access denied; the identity in {CREDENTIALS} needs "
                                f"s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on this bucket")
        return StorageError(f"{what} on {where}: {code or status}: {e}")
    return StorageError(f"{what} on {where}: {e}")


def _translated(what: str):
    def wrap(fn):
        @functools.wraps(fn)
        def inner(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except StorageError:
                raise
            except Exception as e:  # botocore's errors do not share one base class
                if type(e).__module__.startswith(("botocore", "urllib3")):
                    raise explain(e, self.bucket, self.endpoint_url, f"{what} {args[0] if args else ''}".strip()) \
                        from None
                raise
        return inner
    return wrap


@dataclass(frozen=True)
class UploadGrant:
    """A presigned POST: the client sends a multipart form with `fields` plus the file to `url`."""

    url: str
    fields: dict[str, str]
    key: str
    max_bytes: int
    expires_seconds: int

    def curl(self, local_file: str) -> str:
        form = " ".join(f"-F '{k}={v}'" for k, v in self.fields.items())
        return f"curl -sf {form} -F 'file=@{local_file}' {self.url}"


class S3Store(Store):
    delta_excludes_writers = False  # S3 has no atomic rename: writers of one Delta table take turns (commit_lock)

    def __init__(self, root: str, endpoint_url: str | None = None, region: str | None = None,
                 connect_timeout: float = 5, read_timeout: float = 60, retries: int = 3, spark_scheme: str = "s3a"):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = split_s3(root)
        self.endpoint_url = endpoint_url or None
        # s3a:// is Hadoop's S3 client (hadoop-aws); on EMR, s3:// is EMRFS, the one EMR supports and tunes
        self.spark_scheme = spark_scheme
        self.region = region or "us-east-1"
        cfg = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                     retries={"max_attempts": retries, "mode": "standard"},
                     # path-style for S3-compatible servers on one host; AWS itself takes virtual-host style
                     s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                     signature_version="s3v4")
        # a session of its own: boto3's default session would keep the credentials it first found
        self.client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                                                     config=cfg)

    def key(self, rel: str) -> str:
        rel = rel.strip("/")
        if any(part == ".." for part in rel.split("/")):
            raise ValueError(f"path {rel!r} escapes the store root s3://{self.bucket}/{self.prefix}")
        return "/".join(p for p in (self.prefix, rel) if p)

    def uri(self, rel: str) -> str:
        return f"{self.spark_scheme}://{self.bucket}/{self.key(rel)}"

    @_translated("checking the bucket")
    def check(self) -> None:
        """Fail early, with the setting to fix, if the bucket is missing or the credentials cannot list it."""
        # a LIST, not a HEAD: its error body says which (NoSuchBucket, SignatureDoesNotMatch, AccessDenied)
        self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key(""), MaxKeys=1)

    def _walk(self, prefix: str, delimiter: str | None = None):
        kwargs = {"Bucket": self.bucket, "Prefix": prefix} | ({"Delimiter": delimiter} if delimiter else {})
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            yield from page.get("Contents", [])

    @_translated("listing")
    def list_files(self, rel_dir: str) -> list[FileInfo]:
        prefix = self.key(rel_dir) + "/"
        # S3 has no rename-time: LastModified is when the object was written, i.e. when it arrived
        return [FileInfo(o["Key"][len(prefix):], o["Size"], int(o["LastModified"].timestamp() * 1e9))
                for o in self._walk(prefix, "/") if o["Key"] != prefix]

    @_translated("reading")
    def open_read(self, rel: str):
        body = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"]
        return _Reader(body)

    @_translated("checking")
    def exists(self, rel: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(rel))
            return True
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise
        # a "directory" (what Spark writes) is a prefix with objects under it
        page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key(rel) + "/", MaxKeys=1)
        return page.get("KeyCount", 0) > 0

    @_translated("moving")
    def move(self, src: str, dst: str) -> None:
        # copy then delete: S3 has no rename. A crash in between leaves both copies, never neither.
        self.client.copy({"Bucket": self.bucket, "Key": self.key(src)}, self.bucket, self.key(dst))
        self.client.delete_object(Bucket=self.bucket, Key=self.key(src))

    @_translated("writing")
    def write_text(self, rel: str, text: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=text.encode("utf-8"))

    @_translated("reading")
    def read_text(self, rel: str) -> str | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read().decode("utf-8")
        except self.client.exceptions.NoSuchKey:
            return None

    @_translated("writing")
    def create_exclusive(self, rel: str, text: str) -> str | None:
        from botocore.exceptions import ClientError

        try:  # S3 conditional writes: the put fails with 412 if the key exists
            self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=text.encode("utf-8"), IfNoneMatch="*")
            return None
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
        return self.read_text(rel)

    @_translated("deleting")
    def delete_tree(self, rel: str) -> None:
        keys = [o["Key"] for o in self._walk(self.key(rel) + "/")] + [self.key(rel)]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    @_translated("presigning an upload")
    def presigned_upload(self, rel: str, max_bytes: int, expires_seconds: int) -> UploadGrant:
        """A URL that lets a client upload exactly one object, `rel`, of at most `max_bytes`, until it expires."""
        if max_bytes <= 0 or expires_seconds <= 0:
            raise ValueError("max_bytes and expires_seconds must be positive")
        key = self.key(rel)
        post = self.client.generate_presigned_post(
            self.bucket, key, Conditions=[{"key": key}, ["content-length-range", 1, max_bytes]],
            ExpiresIn=expires_seconds)
        return UploadGrant(post["url"], post["fields"], key, max_bytes, expires_seconds)


class _Reader(io.RawIOBase):
    """botocore's StreamingBody as a file object (read(n), context manager, close)."""

    def __init__(self, body):
        self.body = body

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self.body.read(None if n is None or n < 0 else n)

    def readinto(self, b) -> int:
        data = self.body.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.body.close()
        super().close()
