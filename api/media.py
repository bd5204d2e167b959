"""GET /media/{key}: local media (embedded mode) behind expiring signed links, the local
stand-in for S3 presigned URLs. No bearer token: the signature is the permission."""

from __future__ import annotations

from litestar import get
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.response import File

from api.errors import error_response
from api.services import ServicesDep
from core.local_media import LocalMediaStore

#: The types the store stage writes (mimetypes would say audio/x-wav).
CONTENT_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg; codecs=opus",
    ".mp3": "audio/mpeg",
    ".png": "image/png",
    ".json": "application/json",
}


@get(
    "/media/{key:path}",
    tags=["media"],
    summary="A stored output, by signed link (embedded mode)",
    include_in_schema=True,
    # For the document: the file's own type is sent (see CONTENT_TYPES).
    media_type="*/*",
    responses={401: error_response("Expired or wrong signature"), 404: error_response("No file")},
)
async def media(key: str, expires: int, sig: str, services: ServicesDep) -> File:
    store = services.store
    key = key.lstrip("/")
    if not isinstance(store, LocalMediaStore):
        raise NotFoundException("media is served by S3 in this deployment")
    if not store.verify(key, expires, sig):
        raise NotAuthorizedException("the link has expired or its signature is wrong")
    try:
        path = store.path(key)
    except ValueError:
        raise NotFoundException("no such media") from None
    if not path.is_file():
        raise NotFoundException("no such media")
    media_type = CONTENT_TYPES.get(path.suffix) or "application/octet-stream"
    return File(path=path, media_type=media_type, content_disposition_type="inline")
