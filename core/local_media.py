"""Media kept in a local folder (embedded mode), handed out as expiring signed links that the
API serves at ``/media/{key}``: the same contract as S3 presigned URLs, with no S3."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote

from core.settings import Settings


def signing_key(data_dir: Path) -> bytes:
    """A random key kept in the data folder, so links survive a restart of the process."""
    path = data_dir / "media-signing.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(secrets.token_bytes(32))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_bytes()


def sign(key: bytes, media_key: str, expires: int) -> str:
    return hmac.new(key, f"{media_key}\n{expires}".encode(), hashlib.sha256).hexdigest()


class LocalMediaStore:
    """The MediaStore interface over ``DATA_DIR/media``."""

    def __init__(self, settings: Settings) -> None:
        data_dir = Path(settings.data_dir).resolve()
        self.root = data_dir / "media"
        self.url_ttl = settings.presigned_url_ttl
        self.base_url = (
            settings.public_base_url or f"http://127.0.0.1:{settings.app_api_port}"
        ).rstrip("/")
        self.key = signing_key(data_dir)

    def path(self, key: str) -> Path:
        """The file of ``key``; refuses keys that would leave the media folder."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"media key {key!r} leaves the media folder")
        return path

    def ensure_bucket(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"{self.root} is not writable")

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see half a file

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        return path.read_bytes() if path.is_file() else None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else None

    def presign(self, key: str) -> str:
        expires = int(time.time()) + self.url_ttl
        signature = sign(self.key, key, expires)
        return f"{self.base_url}/media/{quote(key)}?expires={expires}&sig={signature}"

    def verify(self, key: str, expires: int, signature: str) -> bool:
        if expires < time.time():
            return False
        # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500).
        expected = sign(self.key, key, expires).encode()
        return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
