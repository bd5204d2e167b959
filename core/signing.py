"""The webhook signing secret and Standard Webhooks signatures (https://www.standardwebhooks.com).

``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")). The key
comes from ``WEBHOOK_SECRET`` (``whsec_`` + base64); it never appears in logs, records or
bodies. The API checks it at start (``api.services``), the workers sign with it
(``actors.webhooks``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from core.backends import kept_secret
from core.settings import Settings, SettingsError

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)


def webhook_secret(settings: Settings) -> str:
    """WEBHOOK_SECRET; with an embedded database and none set, a random one kept in
    DATA_DIR/webhook-secret (as MARKETPLACE_TOKEN is). A deployment with a real database
    must set it (its receivers need to know it in advance)."""
    return kept_secret(
        settings,
        "WEBHOOK_SECRET",
        "webhook-secret",
        lambda: SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode(),
    )


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional, as in the
    reference libraries)."""
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError("WEBHOOK_SECRET is invalid: expected whsec_ + base64") from None


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one try."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()
