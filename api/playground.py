"""GET /playground: a one-page browser client of the API, for trying workflows by hand.

The page is static and holds no secret: the visitor types the token, which the page keeps in
the browser's localStorage and sends as a bearer header on every /v1 call. Its script and
style are separate files so the Content-Security-Policy can forbid inline script.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, Router, get
from litestar.exceptions import NotFoundException

STATIC = Path(__file__).parent / "static"

#: The only files served, read once at import: they ship inside the package and never change
#: while serving, and a fixed table means no part of the URL ever reaches the filesystem.
#: (Litestar adds "; charset=utf-8" to text types itself.)
ASSETS: dict[str, tuple[str, str]] = {
    name: ((STATIC / name).read_text(encoding="utf-8"), media_type)
    for name, media_type in (
        ("playground.html", "text/html"),
        ("playground.js", "text/javascript"),
        ("playground.css", "text/css"),
    )
}

#: Script, style and API calls from this server only; media may come from S3 (any host).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src * data: blob:; media-src * blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    # Revalidate each time: a redeployed server must not run an old script against a new API.
    "cache-control": "no-cache",
}


def _asset(name: str) -> Response[str]:
    text, media_type = ASSETS[name]
    return Response(text, media_type=media_type, headers=HEADERS)


@get("/playground", include_in_schema=False)
async def page() -> Response[str]:
    return _asset("playground.html")


@get("/playground/{name:str}", include_in_schema=False)
async def asset(name: str) -> Response[str]:
    if name == "playground.html" or name not in ASSETS:
        raise NotFoundException(f"no playground file '{name}'")
    return _asset(name)


#: What api/app.py mounts: the page and its two files, no token needed (they hold no data).
playground = Router(path="/", route_handlers=[page, asset], include_in_schema=False)
