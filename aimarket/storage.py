"""Media storage on S3 (or any S3 HTTP API: MinIO, moto). Blocking boto3 calls: async code
runs them in a thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.client import Config
from botocore.exceptions import ClientError

from aimarket.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


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


class MediaStore:
    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.bucket
        self.url_ttl = settings.presigned_url_ttl
        self.client = _client(settings, settings.s3_endpoint_url)
        # Presigning is local computation; a second client only changes the URL's host.
        public = settings.s3_public_endpoint_url
        self.signer = _client(settings, public) if public else self.client

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (MinIO and fresh test servers start empty)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            self.client.create_bucket(Bucket=self.bucket)

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def size(self, key: str) -> int | None:
        """Size of a stored object, None when it does not exist."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def presign(self, key: str) -> str:
        """An expiring GET URL; computed locally, no request to S3."""
        return self.signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_ttl
        )
