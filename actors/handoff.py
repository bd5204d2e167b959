"""Audio and pictures handed from one stage to the next (generate -> visualize -> store).

They travel as a reference in the message, never as bytes. The bytes wait in the short-lived
state (Redis, with a TTL), or, while Redis cannot be reached, in the media store under
``handoff/``: a generation that finished during a Redis outage is not thrown away and run
again. A reference to the media store starts with ``media:``; the store stage deletes what
it read. (An S3 lifecycle rule on ``handoff/`` cleans up after tasks that failed before it:
docs/operations.md.)
"""

from __future__ import annotations

import asyncio
import logging

from core.backends import Media, State
from core.state import StateUnavailable

log = logging.getLogger(__name__)

MEDIA_PREFIX = "media:"
#: Where hand-offs go in the media store while Redis is unreachable.
MEDIA_FOLDER = "handoff/"


class Handoff:
    def __init__(self, state: State, store: Media) -> None:
        self.state = state
        self.store = store

    async def put(self, key: str, data: bytes) -> str:
        """Keep ``data`` for the next stage; the reference it reads it by."""
        try:
            await self.state.put_blob(key, data)
        except StateUnavailable:
            media_key = MEDIA_FOLDER + key.replace(":", "/")
            await asyncio.to_thread(self.store.put, media_key, data, "application/octet-stream")
            return MEDIA_PREFIX + media_key
        return key

    async def get(self, ref: str) -> bytes | None:
        """The bytes of ``ref``; None when they are gone (expired, or already stored).

        Raises StateUnavailable for a reference in Redis while Redis cannot be reached: the
        stage is retried, and the bytes are there again when Redis is (unless it restarted
        empty, which loses them: the store stage then says ``media_lost``)."""
        if ref.startswith(MEDIA_PREFIX):
            return await asyncio.to_thread(self.store.get, ref.removeprefix(MEDIA_PREFIX))
        return await self.state.get_blob(ref)

    async def delete(self, ref: str) -> None:
        """Drop what was read; in Redis it would expire anyway, so an outage is no error."""
        if ref.startswith(MEDIA_PREFIX):
            await asyncio.to_thread(self.store.delete, ref.removeprefix(MEDIA_PREFIX))
            return
        try:
            await self.state.delete_blob(ref)
        except StateUnavailable:
            log.info("hand-off %s left to expire (Redis unreachable)", ref)
