"""Input audio of a generation: an uploaded file (``upload:<id>``, from ``POST /v1/uploads``)
or an http(s) URL, fetched with size and time limits and decoded safely.

Safety: audio is decoded in this process by libsndfile (soundfile) from memory, never by a
shell or an external program (no ffmpeg); at most :data:`MAX_AUDIO_BYTES` are read from any
source, at most :data:`MAX_AUDIO_S` seconds are decoded (the decoder stops there, so a
highly compressed file cannot expand without bound), URLs are fetched without following
redirects and with a timeout, and only from public addresses (the SSRF guard of
``core.ssrf``, checked right before the fetch, which then goes to the checked address;
``AUDIO_URL_ALLOWLIST`` exempts hosts and ranges). This module imports neither torch nor
audiocraft (the API process uses :func:`decode_audio` for uploads).

Every refusal is a :class:`~core.errors.StageError` with one of the codes
``audio_unavailable`` (missing upload, unreachable URL, HTTP error, redirect, too big, a
non-public address),
``not_audio`` (libsndfile cannot read it) and ``audio_too_long``.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from core.errors import StageError
from core.ssrf import UnsafeURL, pinned, safe_addresses

#: The most bytes read for one input (upload body, stored object or URL response).
MAX_AUDIO_BYTES = 20 * 1024 * 1024
#: The longest input audio accepted, in seconds.
MAX_AUDIO_S = 60.0
#: Highest sample rate and channel count decoded (more channels are mixed down to mono).
MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 2
#: Timeout of a URL fetch (connect, read, each).
FETCH_TIMEOUT_S = 20.0
#: Prefix of an upload reference, and where uploads live in the media store.
UPLOAD_PREFIX = "upload:"


def upload_key(upload_id: str) -> str:
    """The media-store key of an upload: ``abc`` or ``upload:abc`` -> ``uploads/abc.wav``."""
    return f"uploads/{upload_id.removeprefix(UPLOAD_PREFIX)}.wav"


def decode_audio(
    data: bytes, max_seconds: float = MAX_AUDIO_S
) -> tuple[npt.NDArray[np.float32], int]:
    """Decode ``data`` (any format libsndfile reads: WAV, FLAC, OGG, MP3...) to float32
    channels-first samples ``(channels, n)`` and the sample rate.

    Raises StageError ``not_audio`` for unreadable data, an empty file or an absurd sample
    rate, and ``audio_too_long`` past ``max_seconds`` (found while decoding, never by
    decoding more than that).
    """
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels = int(f.samplerate), int(f.channels)
            if not 0 < rate <= MAX_SAMPLE_RATE or channels < 1:
                raise StageError(
                    "not_audio", f"unsupported audio: {rate} Hz, {channels} channel(s)"
                )
            limit = int(max_seconds * rate)
            blocks: list[npt.NDArray[np.float32]] = []
            frames = 0
            for block in f.blocks(blocksize=rate, dtype="float32", always_2d=True):
                if channels > MAX_CHANNELS:
                    block = block.mean(axis=1, keepdims=True)
                frames += block.shape[0]
                if frames > limit:
                    raise StageError(
                        "audio_too_long", f"the audio is longer than {max_seconds:g} s"
                    )
                blocks.append(block)
    except StageError:
        raise
    except (RuntimeError, TypeError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        raise StageError("not_audio", f"not readable audio: {exc}") from None
    if frames == 0:
        raise StageError("not_audio", "the audio is empty")
    samples = np.concatenate(blocks, axis=0).T
    samples = np.clip(np.nan_to_num(samples), -1.0, 1.0).astype(np.float32, copy=False)
    return np.ascontiguousarray(samples), rate


async def fetch_audio(ref: str, res: Any) -> tuple[npt.NDArray[np.float32], int]:
    """The audio an ``audio`` input references, decoded: ``(samples (channels, n), rate)``.

    ``res`` is the worker's :class:`~actors.resources.Resources` (its ``store`` is read for
    uploads). Raises StageError (see the module docstring).
    """
    if ref.startswith(UPLOAD_PREFIX):
        data = await asyncio.to_thread(_read_upload, res.store, ref)
    else:
        data = await _download(ref, res.settings.audio_url_allowlist)
    return await asyncio.to_thread(decode_audio, data)


def _read_upload(store: Any, ref: str) -> bytes:
    from core.local_media import LocalMediaStore

    key = upload_key(ref)
    missing = StageError("audio_unavailable", f"no upload {ref!r} (it may have expired)")
    if isinstance(store, LocalMediaStore):
        try:
            path = store.path(key)
            if path.stat().st_size > MAX_AUDIO_BYTES:
                raise StageError("audio_unavailable", f"upload {ref!r} is too large")
            return path.read_bytes()
        except (FileNotFoundError, ValueError):
            raise missing from None
    from botocore.exceptions import ClientError

    try:
        body = store.client.get_object(Bucket=store.bucket, Key=key)["Body"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            raise missing from None
        raise  # S3 trouble: a retry may fix it
    data: bytes = body.read(MAX_AUDIO_BYTES + 1)
    if len(data) > MAX_AUDIO_BYTES:
        raise StageError("audio_unavailable", f"upload {ref!r} is too large")
    return data


async def _download(url: str, allowlist: str) -> bytes:
    import httpx

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StageError("audio_unavailable", "audio URLs must be http(s) URLs with a host")
    try:
        addresses = await asyncio.to_thread(
            safe_addresses, url, allowlist, what="audio URL", setting="AUDIO_URL_ALLOWLIST"
        )
    except UnsafeURL as exc:  # Unresolvable too: a retry is not worth a failed generation
        raise StageError("audio_unavailable", str(exc)) from None
    target, extra_headers, extensions = pinned(url, addresses)
    too_big = StageError(
        "audio_unavailable", f"the audio at the URL is over {MAX_AUDIO_BYTES} bytes"
    )
    try:
        async with (
            httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client,
            client.stream("GET", target, headers=extra_headers, extensions=extensions) as response,
        ):
            if response.is_redirect:
                raise StageError(
                    "audio_unavailable",
                    f"the audio URL redirects (HTTP {response.status_code}); "
                    "give the final URL, redirects are not followed",
                )
            if response.status_code != 200:
                raise StageError(
                    "audio_unavailable", f"the audio URL answered HTTP {response.status_code}"
                )
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > MAX_AUDIO_BYTES:
                raise too_big
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_AUDIO_BYTES:
                    raise too_big
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise StageError(
            "audio_unavailable", f"could not fetch the audio URL: {type(exc).__name__}: {exc}"
        ) from None
    return b"".join(chunks)
