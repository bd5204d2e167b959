"""POST /v1/uploads: input audio for the workflows that take an ``audio`` field
(continuation, melody). The file is checked and stored now; a task references it as
``upload:<id>``."""

from __future__ import annotations

import uuid
from typing import Any

import anyio.to_thread
import msgspec
from litestar import Request, post
from litestar.status_codes import HTTP_201_CREATED

from api.errors import ApiError, error_response
from api.services import ServicesDep
from audio.audio_input import MAX_AUDIO_S, UPLOAD_PREFIX, decode_audio, upload_key
from audio.wav import encode_wav
from core.errors import StageError

#: The largest upload body, in bytes.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024


class UploadOut(msgspec.Struct, kw_only=True):
    #: What an ``audio`` input field takes: ``upload:<id>``.
    upload_id: str
    duration_s: float
    sample_rate: int


def _too_large() -> ApiError:
    return ApiError(413, "upload_too_large", f"the upload is over {MAX_UPLOAD_BYTES} bytes")


async def _read_body(request: Request[Any, Any, Any]) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_UPLOAD_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _check_and_encode(data: bytes) -> tuple[bytes, float, int]:
    samples, rate = decode_audio(data, MAX_AUDIO_S)
    return encode_wav(samples, rate), samples.shape[-1] / rate, rate


@post(
    "/v1/uploads",
    tags=["uploads"],
    summary="Upload input audio",
    description=(
        "The raw body is an audio file (Content-Type audio/*: WAV, FLAC, OGG, MP3...) of at "
        f"most {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB and {MAX_AUDIO_S:g} s. It is decoded, "
        "stored as WAV and answered with an id that an `audio` input field takes "
        "(`upload:<id>`)."
    ),
    status_code=HTTP_201_CREATED,
    request_max_body_size=None,  # limited while reading, with this API's own error code
    responses={
        413: error_response("The body is over the size limit"),
        422: error_response("Not readable audio, or longer than the limit"),
    },
)
async def upload_audio(request: Request[Any, Any, Any], services: ServicesDep) -> UploadOut:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type.startswith("audio/") and content_type != "application/octet-stream":
        raise ApiError(
            422, "not_audio", f"the body must be audio (Content-Type audio/*), not {content_type!r}"
        )
    data = await _read_body(request)
    try:
        wav, duration, rate = await anyio.to_thread.run_sync(_check_and_encode, data)
    except StageError as exc:
        raise ApiError(422, exc.code, exc.message) from None
    upload_id = uuid.uuid4().hex
    await anyio.to_thread.run_sync(services.store.put, upload_key(upload_id), wav, "audio/wav")
    return UploadOut(
        upload_id=UPLOAD_PREFIX + upload_id, duration_s=round(duration, 3), sample_rate=rate
    )
