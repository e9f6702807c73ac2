"""The backup bucket seen from the operator's machine: create-only and compare-and-swap puts, reads
and deletes of small objects (boto3), with S3's errors mapped once, here, to :class:`CloudError`.

A create is ``PutObject`` with ``If-None-Match: *`` (S3, Ceph RGW as behind Hetzner Object Storage,
moto as in the lab): of two writers of one key, the second gets ``412 Precondition Failed``.  A
replace is ``PutObject`` with ``If-Match: <etag>``.  A provider that ignored the header would make
both succeed, so callers that rely on it check it (:func:`hcbpg.ops.env_lock.ensure_env_lock`).
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Any, Protocol

from hcbpg import secrets as hsecrets
from hcbpg.errors import CloudError

if TYPE_CHECKING:  # pragma: no cover
    import datetime as _dt

    from hcbpg.params import Params, S3Repo

#: S3 answers a conditional write that lost with 412; AWS answers one racing another write with 409
_LOST = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
_MISSING = ("NoSuchKey", "404", "NotFound")


class ObjectStoreLike(Protocol):
    """What operations need from a bucket (the real one, or moto's in tests): the environment lock's create,
    replace, get and delete; the repository's history (:mod:`hcbpg.ops.repo_history`) its versions."""

    name: str

    def create(self, key: str, body: bytes) -> str | None: ...

    def replace(self, key: str, body: bytes, *, etag: str) -> str | None: ...

    def get(self, key: str) -> tuple[bytes, str] | None: ...

    def delete(self, key: str) -> None: ...

    def keys(self, prefix: str) -> list[str]: ...

    def versions(self, prefix: str) -> list[dict[str, Any]]: ...

    def copy_version(self, source_key: str, version_id: str, target_key: str, *, size: int = 0) -> None: ...

    def versioning(self) -> str | None: ...

    def enable_versioning(self) -> None: ...

    def object_lock(self) -> tuple[str | None, int | None] | None: ...

    def put_object_lock(self, mode: str, days: int) -> None: ...

    def lifecycle_rules(self) -> list[dict[str, Any]]: ...

    def put_lifecycle_rules(self, rules: list[dict[str, Any]]) -> None: ...


class ObjectStore:
    """One bucket through a boto3 S3 client; *name* (``s3://bucket``, or ``repo2 s3://bucket`` with a *label*
    naming the repository) is what errors, outcomes and checks call it."""

    def __init__(self, client: Any, bucket: str, *, label: str | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.name = f"{label} s3://{bucket}" if label else f"s3://{bucket}"

    @classmethod
    def from_params(cls, params: "Params", key_id: str, key_secret: str) -> "ObjectStore":
        """The bucket of params ``pgbackrest`` (repo1: endpoint, region, URI style, CA) with the given S3 key."""
        pb = params.pgbackrest
        if pb is None:
            raise CloudError("params have no pgbackrest section: there is no backup bucket to use",
                             hint="Add the pgbackrest section (bucket, endpoint, keys) to params.")
        return cls.of_repo(pb, key_id, key_secret)

    @classmethod
    def of_repo(cls, pb: "S3Repo", key_id: str, key_secret: str, *, label: str | None = None) -> "ObjectStore":
        """The bucket of one repository (``pgbackrest`` for repo1, ``pgbackrest.repo2``: its endpoint, region, URI
        style and CA) with the given S3 key; *label* names the repository in :attr:`name` (``repo2``)."""
        import boto3  # noqa: PLC0415 - heavy; loaded by the steps and commands that use the bucket only
        from botocore.config import Config  # noqa: PLC0415 - heavy, with boto3 above

        verify: bool | str = (pb.s3_ca_file or True) if pb.s3_verify_tls else False
        endpoint = pb.s3_endpoint if "://" in pb.s3_endpoint else f"https://{pb.s3_endpoint}"
        # checksums only when an operation needs them: boto3's default CRC headers are refused by some
        # S3-compatible stores; timeouts and retries short, a lock is taken by a waiting operator
        config = Config(region_name=pb.s3_region, s3={"addressing_style": "virtual" if pb.s3_uri_style == "host"
                                                      else "path"},
                        request_checksum_calculation="when_required", response_checksum_validation="when_required",
                        connect_timeout=10, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, aws_access_key_id=key_id.strip(),
                                                aws_secret_access_key=key_secret.strip(), verify=verify,
                                                config=config)
        return cls(client, pb.s3_bucket, label=label)

    @classmethod
    def of_backup_bucket(cls, params: "Params") -> "ObjectStore":
        """:meth:`from_params` with the S3 key that params ``pgbackrest.s3_key``/``s3_key_secret`` refer to
        (for the operator's commands; a notebook resolves them through ``rb.secret``, which scrubs them)."""
        pb = params.pgbackrest
        if pb is None:
            return cls.from_params(params, "", "")  # refused there, with the operator's hint
        return cls.from_params(params, hsecrets.resolve(pb.s3_key, key="pgbackrest.s3_key"),
                               hsecrets.resolve(pb.s3_key_secret, key="pgbackrest.s3_key_secret"))

    @classmethod
    def of_admin_key(cls, params: "Params") -> "ObjectStore":
        """:meth:`from_params` with repo1's admin key (``pgbackrest.admin_s3_key``/``admin_s3_key_secret``): the
        key that reads every version and can erase them, never on a database server."""
        pb = params.pgbackrest
        if pb is None or pb.admin_s3_key is None or pb.admin_s3_key_secret is None:
            raise CloudError("params have no pgbackrest.admin_s3_key: the repository's admin key is needed here",
                             hint="Add pgbackrest.admin_s3_key and admin_s3_key_secret (secret references).")
        return cls.from_params(params, hsecrets.resolve(pb.admin_s3_key, key="pgbackrest.admin_s3_key"),
                               hsecrets.resolve(pb.admin_s3_key_secret, key="pgbackrest.admin_s3_key_secret"))

    def versions(self, prefix: str) -> list[dict[str, Any]]:
        """Every version and delete marker under *prefix*: ``key, version_id, last_modified, is_latest,
        delete_marker, size``, each key's newest first (S3's order)."""
        out: list[dict[str, Any]] = []
        token: dict[str, str] = {}
        while True:
            r = self._call("list the versions under", prefix, self.client.list_object_versions, Bucket=self.bucket,
                           Prefix=prefix, **token)
            page = [{"key": str(v["Key"]), "version_id": str(v["VersionId"]), "last_modified": v["LastModified"],
                     "is_latest": bool(v.get("IsLatest")), "delete_marker": False, "size": int(v.get("Size", 0))}
                    for v in r.get("Versions", [])]
            page += [{"key": str(v["Key"]), "version_id": str(v["VersionId"]), "last_modified": v["LastModified"],
                      "is_latest": bool(v.get("IsLatest")), "delete_marker": True, "size": 0}
                     for v in r.get("DeleteMarkers", [])]
            out += sorted(page, key=lambda v: v["key"])  # stable: each key's versions stay newest first
            if not r.get("IsTruncated"):
                return out
            token = {k: str(r[n]) for k, n in (("KeyMarker", "NextKeyMarker"), ("VersionIdMarker", "NextVersionIdMarker"))
                     if r.get(n)}

    def copy_version(self, source_key: str, version_id: str, target_key: str, *, size: int = 0) -> None:
        """Copy one version of *source_key* (*size* bytes) to *target_key* in this bucket: CopyObject, whose empty
        body's Content-MD5 goes along (stores that ask it of every write under Object Lock: moto); from 5 GB on,
        boto3's multipart copy."""
        source = {"Bucket": self.bucket, "Key": source_key, "VersionId": version_id}
        what = f"{source_key} ({version_id}) to {target_key}"
        if size >= _COPY_OBJECT_MAX:
            self._call("copy", what, self.client.copy, CopySource=source, Bucket=self.bucket, Key=target_key)
            return
        events = self.client.meta.events
        events.register("before-sign.s3.CopyObject", _empty_body_md5, unique_id="hcbpg-copy-md5")
        self._call("copy", what, self.client.copy_object, CopySource=source, Bucket=self.bucket, Key=target_key)

    def versioning(self) -> str | None:
        """The bucket's versioning: ``Enabled``, ``Suspended``, or None when it was never enabled."""
        r = self._call("read the versioning of", self.bucket, self.client.get_bucket_versioning, Bucket=self.bucket)
        return str(r["Status"]) if r.get("Status") else None

    def put_object_lock(self, mode: str, days: int) -> None:
        """Object Lock on with a default retention of *days* in *mode* for every new version (an admin key's action;
        the provider refuses it on a bucket made without Object Lock or without versioning)."""
        self._call("set Object Lock on", self.bucket, self.client.put_object_lock_configuration, Bucket=self.bucket,
                   ObjectLockConfiguration={"ObjectLockEnabled": "Enabled",
                                            "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}}})

    def enable_versioning(self) -> None:
        """Turn versioning on (an admin key's action)."""
        self._call("enable versioning on", self.bucket, self.client.put_bucket_versioning, Bucket=self.bucket,
                   VersioningConfiguration={"Status": "Enabled"})

    def lifecycle_rules(self) -> list[dict[str, Any]]:
        """The bucket's lifecycle rules as S3 gives them (GetBucketLifecycleConfiguration); ``[]`` when it has none."""
        try:
            r = self._call("read the lifecycle configuration of", self.bucket,
                           self.client.get_bucket_lifecycle_configuration, Bucket=self.bucket)
        except _Missing:  # NoSuchLifecycleConfiguration: 404
            return []
        return [dict(rule) for rule in r.get("Rules") or []]

    def put_lifecycle_rules(self, rules: list[dict[str, Any]]) -> None:
        """The bucket's lifecycle configuration replaced by *rules* (S3 keeps one configuration per bucket: every rule
        to keep goes along); none: the configuration deleted.  An admin key's action."""
        if not rules:
            self._call("delete the lifecycle configuration of", self.bucket, self.client.delete_bucket_lifecycle,
                       Bucket=self.bucket)
            return
        self._call("set the lifecycle configuration of", self.bucket, self.client.put_bucket_lifecycle_configuration,
                   Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})

    def create(self, key: str, body: bytes, *, lock: tuple[str, "_dt.datetime"] | None = None) -> str | None:
        """Write *key* only if it does not exist: its ETag, or None when it exists already.

        *lock*: ``(mode, retain_until)``, S3 Object Lock retention of this version (GOVERNANCE or COMPLIANCE;
        the bucket must have Object Lock enabled), sent with the Content-MD5 S3 asks of such a write."""
        # Content-MD5 on every put: S3 asks it of any write into a bucket with Object Lock's default retention
        extra: dict[str, Any] = {"ContentMD5": _md5(body)}
        if lock is not None:
            extra.update(ObjectLockMode=lock[0], ObjectLockRetainUntilDate=lock[1])
        try:
            return str(self._call("create", key, self.client.put_object, Bucket=self.bucket, Key=key, Body=body,
                                  IfNoneMatch="*", **extra)["ETag"])
        except _Lost:
            return None

    def keys(self, prefix: str) -> list[str]:
        """Every key under *prefix*, in S3's order (lexicographic)."""
        out: list[str] = []
        token: dict[str, str] = {}
        while True:
            r = self._call("list", prefix, self.client.list_objects_v2, Bucket=self.bucket, Prefix=prefix, **token)
            out += [str(o["Key"]) for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return out
            token = {"ContinuationToken": str(r["NextContinuationToken"])}

    def object_lock(self) -> tuple[str | None, int | None] | None:
        """``(default mode, default days)`` when the bucket has Object Lock enabled (None each without a default
        retention rule); None when it has not."""
        try:
            r = self._call("read the Object Lock configuration of", self.bucket,
                           self.client.get_object_lock_configuration, Bucket=self.bucket)
        except _Missing:
            return None
        except CloudError as exc:
            if "ObjectLockConfigurationNotFound" in exc.message:
                return None
            raise
        conf = r.get("ObjectLockConfiguration") or {}
        if conf.get("ObjectLockEnabled") != "Enabled":
            return None
        rule = (conf.get("Rule") or {}).get("DefaultRetention") or {}
        days = rule.get("Days") or (rule["Years"] * 365 if rule.get("Years") else None)
        return rule.get("Mode"), days

    def replace(self, key: str, body: bytes, *, etag: str) -> str | None:
        """Overwrite *key* only if its ETag is still *etag*: the new ETag, or None when it changed or is gone."""
        try:
            return str(self._call("replace", key, self.client.put_object, Bucket=self.bucket, Key=key, Body=body,
                                  IfMatch=etag, ContentMD5=_md5(body))["ETag"])
        except (_Lost, _Missing):
            return None

    def get(self, key: str) -> tuple[bytes, str] | None:
        """``(body, etag)`` of *key*, None when there is none."""
        try:
            r = self._call("read", key, self.client.get_object, Bucket=self.bucket, Key=key)
        except _Missing:
            return None
        return r["Body"].read(), str(r["ETag"])

    def delete(self, key: str) -> None:
        """Remove *key* (nothing when it is gone already)."""
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=key)

    def _call(self, what: str, key: str, fn: Any, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - heavy, loaded with boto3 only

        try:
            return fn(**kw)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _LOST or status in ("412", "409"):
                raise _Lost(code) from exc
            if code in _MISSING or status == "404" and code != "NoSuchBucket":
                raise _Missing(code) from exc
            raise CloudError(f"{self.name}: {what} {key} failed: {code or status} {err.get('Message', '')}".rstrip(),
                             hint=_hint(code)) from exc
        except BotoCoreError as exc:
            raise CloudError(f"{self.name}: {what} {key} failed: {exc}",
                             hint="Check pgbackrest.s3_endpoint, s3_ca_file and that this machine reaches the "
                                  "bucket's endpoint.") from exc


#: CopyObject copies up to 5 GB in one request
_COPY_OBJECT_MAX = 5 * 1024 ** 3


def _empty_body_md5(request: Any, **_: Any) -> None:
    request.headers["Content-MD5"] = _md5(b"")


def _md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - S3's integrity header


class _Lost(Exception):
    """A conditional write lost (412/409): internal to this module."""


class _Missing(Exception):
    """No such key (404): internal to this module."""


def _hint(code: str) -> str:
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return "The S3 key was refused: check the keys params pgbackrest.s3_key and s3_key_secret point to."
    if code == "NoSuchBucket":
        return "The bucket does not exist: create it (params pgbackrest.s3_bucket) before this step."
    if code in ("NotImplemented", "InvalidArgument"):
        return ("The store does not support conditional writes (If-None-Match / If-Match), which the "
                "environment lock needs; use a provider that does.")
    return "Run the step again; if it persists, check the bucket's endpoint and the S3 key."
