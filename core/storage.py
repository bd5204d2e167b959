"""Media storage on S3 (or any S3 HTTP API: MinIO, moto). Blocking boto3 calls: async code
runs them in a thread."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import boto3
from botocore.client import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.settings import Settings, SettingsError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CreateBucketConfigurationTypeDef


def media_key(task_id: str, name: str, index: int, extension: str = "wav") -> str:
    """Where a task's output lives: predictable, so a re-run overwrites instead of duplicating."""
    return f"tasks/{task_id}/{name}-{index}.{extension}"


def _client(settings: Settings, endpoint_url: str | None) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=settings.aws_region_name,
        aws_access_key_id=settings.aws_access_key,
        aws_secret_access_key=settings.aws_secret_key,
        # SigV4 everywhere; path-style addressing works with MinIO and moto by IP or name.
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


#: AWS's region with no LocationConstraint: create_bucket must name any other one.
_DEFAULT_REGION = "us-east-1"
#: The error codes of an object that does not exist (HEAD answers a bare 404).
_NO_OBJECT = ("404", "NoSuchKey", "NotFound")


class MediaStore:
    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.bucket
        self.region = settings.aws_region_name
        self.endpoint = settings.s3_endpoint_url
        self.url_ttl = settings.presigned_url_ttl
        self.client = _client(settings, settings.s3_endpoint_url)
        # Presigning is local computation; a second client only changes the URL's host.
        public = settings.s3_public_endpoint_url
        self.signer = _client(settings, public) if public else self.client

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (MinIO and fresh servers start empty), in
        AWS_REGION_NAME. Raises SettingsError, one line naming the setting to look at, when
        the bucket can be neither reached nor created: a deployment must not start without
        its media store."""
        try:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _code(exc) not in ("404", "NoSuchBucket"):
                    raise
                if self.region == _DEFAULT_REGION:
                    self.client.create_bucket(Bucket=self.bucket)
                else:
                    # Any region name: MinIO and other servers have their own.
                    where = cast(
                        "CreateBucketConfigurationTypeDef", {"LocationConstraint": self.region}
                    )
                    self.client.create_bucket(Bucket=self.bucket, CreateBucketConfiguration=where)
        except (ClientError, BotoCoreError) as exc:
            raise SettingsError(self._unusable(exc)) from None

    def _unusable(self, exc: ClientError | BotoCoreError) -> str:
        """Why the bucket cannot be used, naming the setting most likely at fault."""
        where = f"at {self.endpoint}" if self.endpoint else "on AWS"
        code = _code(exc) if isinstance(exc, ClientError) else ""
        if isinstance(exc, BotoCoreError):
            setting = "S3_ENDPOINT_URL"
        elif code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            setting = "AWS_ACCESS_KEY and AWS_SECRET_KEY"
        elif "Location" in code or "Region" in code or code == "AuthorizationHeaderMalformed":
            setting = "AWS_REGION_NAME"
        else:
            setting = "S3_BUCKET"
        reason = " ".join(str(exc).split())  # one line, whatever botocore wrote
        return f"S3 bucket {self.bucket!r} {where} cannot be used (check {setting}): {reason}"

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes | None:
        """The object's bytes, None when it does not exist."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _code(exc) in _NO_OBJECT:
                return None
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def size(self, key: str) -> int | None:
        """Size of a stored object, None when it does not exist."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _NO_OBJECT:
                return None
            raise
        return int(head["ContentLength"])

    def presign(self, key: str) -> str:
        """An expiring GET URL; computed locally, no request to S3."""
        return self.signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_ttl
        )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
