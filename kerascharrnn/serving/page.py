"""The writing page (GET /write): a plain editor in the browser with rnn-writer's controls, over the
server's own /v1/completions. Its three files are in static/; every one is served from here, nothing is
fetched from elsewhere (its Content-Security-Policy says so to the browser), so it works offline."""

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from kerascharrnn.serving.context import Serving
from kerascharrnn.serving.errors import ClientError

PAGE = "/write"
_FILES = {"write.js": "text/javascript; charset=utf-8", "write.css": "text/css; charset=utf-8"}
# the page's own files and its own API only: no CDN, no fonts from elsewhere, no inline script; and no other site
# may show it in a frame (clickjacking: a page of theirs could hide it under its own and take the writer's clicks)
_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self';"
           " frame-ancestors 'self'")


def _file(name: str) -> bytes:
    return resources.files("kerascharrnn.serving").joinpath("static", name).read_bytes()


def routes(ctx: Serving) -> APIRouter:
    del ctx  # the page asks the API for the model's name
    router = APIRouter()
    headers = {"Content-Security-Policy": _POLICY, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "X-Frame-Options": "SAMEORIGIN"}

    @router.get(PAGE)
    async def page():
        return Response(_file("write.html"), media_type="text/html; charset=utf-8", headers=headers)

    @router.get(PAGE + "/{name}")
    async def asset(name: str):
        if name not in _FILES:
            raise ClientError(404, f"no {PAGE}/{name[:100]}: the page has {', '.join(_FILES)}")
        return Response(_file(name), media_type=_FILES[name], headers=headers)

    return router
