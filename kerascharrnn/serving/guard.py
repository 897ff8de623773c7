"""What every request passes before it reaches an API (ASGI middleware): the name it was sent to, the page it
comes from, the API key, and its body's encoding, size and pace.

  - Host: on a server bound to a loopback address (or given --allowed_hosts), a request must name this machine
    (localhost, *.localhost, a loopback address, the machine's own name, or --allowed_hosts): a web page on another
    name that resolves here (DNS rebinding) could otherwise read the replies as if they were its own. 403 otherwise.
  - Origin (cors.py): a page the server does not answer gets 403 before any work; an allowed page's every reply
    carries Access-Control-Allow-Origin (refusals too: a frontend can read why).
  - The API key (when set): 401 in the API's shape, but for the health checks, rnn-writer's GET / and the
    page's files; whether the request had it is left in the request's state (the open endpoints say less
    without it).
  - The body: a compressed one is refused (415); one larger than --max_body_bytes is refused (413) after it
    arrived, read and dropped up to a bound (a reply sent while the client still writes would be lost to a
    reset); one that does not arrive whole within --body_timeout seconds is refused (408). A client that
    leaves in the middle of its body is a log line, not an error.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import socket
from typing import Iterable, Optional

from kerascharrnn.serving.context import log, short
from kerascharrnn.serving.cors import OriginPolicy, same_origin
from kerascharrnn.serving.errors import ClientError, dialect_for, error_reply

PREFLIGHT_SECONDS = "600"  # how long a browser may keep a preflight's answer
DRAIN_LIMIT = 256 << 20  # bytes of a refused body read and dropped, at most (a larger one's client sees a reset)


class HostPolicy:
    """The names a request may be sent to (its Host header), on a server bound to a loopback address.

    Args:
      extra: more names (--allowed_hosts), or "*" for any.
    """

    def __init__(self, extra: Iterable[str] = ()):
        names = {name.strip().lower() for name in extra if name.strip()}
        self.any = "*" in names
        self.names = names | {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}

    @classmethod
    def for_address(cls, bound_to: Optional[str], extra: str = "") -> Optional["HostPolicy"]:
        """The policy of a server bound to `bound_to` given --allowed_hosts `extra`: checked on a loopback address,
        and on any address once names are given ("local": this machine's names only, as for a container published
        on the host's loopback); None (no check) for "*" or a server reached over the network by names it cannot
        know."""
        names = [name for name in extra.split(",") if name.strip().lower() != "local"]
        if not extra.strip() and not (bound_to and _loopback(bound_to)):
            return None
        policy = cls(names)
        return None if policy.any else policy

    def allows(self, host: str) -> bool:
        if not host:  # HTTP/1.0 without Host: no browser sends that
            return True
        name = host.strip().lower()
        if name.startswith("["):  # [v6]:port
            name = name[1:name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.rsplit(":", 1)[0]
        return name in self.names or name.endswith(".localhost") or _loopback(name)


def _loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return name.lower() == "localhost"


class Guard:
    """The middleware (see the module's docstring).

    Args:
      app: the application behind it.
      max_body_bytes: the largest body read.
      body_timeout: seconds a request's body may take to arrive.
      api_key: if given, required from every client but at the open endpoints.
      pages: the web pages answered (cors.py).
      hosts: the names answered (None: any).
      is_open: (method, path) -> whether the endpoint needs no key.
    """

    def __init__(self, app, max_body_bytes: int, body_timeout: float, api_key: Optional[str],
                 pages: OriginPolicy, hosts: Optional[HostPolicy], is_open):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.api_key = api_key.encode("utf-8") if api_key else None
        self.pages = pages
        self.hosts = hosts
        self.is_open = is_open

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "")
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.hosts is not None and not self.hosts.allows(host):
            return await self._refuse(scope, send, ClientError(
                403, f"this server answers requests to this machine's names; Host: {short(host, 100)} is another"
                     " (a web page's DNS rebinding, or a proxy: start bin/serve with --allowed_hosts naming it)"))
        origin = headers.get(b"origin")
        if origin is not None:
            page = origin.decode("latin-1")
            if not (same_origin(page, host) or self.pages.allows(page)):
                return await self._refuse(scope, send, self._foreign(page))
            send = _with_headers(send, [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                                        (b"access-control-expose-headers", b"Retry-After")])
        if method == "OPTIONS":  # a preflight (or a plain OPTIONS): no key needed, nothing to run
            return await self._preflight(send, headers)
        authorized = self.api_key is None or self._authorized(headers.get(b"authorization", b""))
        scope.setdefault("state", {})["authorized"] = authorized
        if not authorized and not self.is_open(method, path):
            return await self._refuse(scope, send, ClientError(
                401, "Incorrect API key provided: send Authorization: Bearer <the server's --api_key>",
                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding not in (b"", b"identity"):
            return await self._refuse(scope, send, ClientError(
                415, f"the body is {short(encoding.decode('latin-1'), 40)}-encoded; the server reads plain JSON"))
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _drain(receive, deadline)
            return await self._refuse(scope, send, self._too_large())
        body = _Body(receive, self.max_body_bytes, deadline, self)
        return await self.app(scope, body.receive, send)

    def _foreign(self, page: str) -> ClientError:
        if page.strip().lower() == "null" and self.pages.local:
            why = ("a page opened from a file (Origin: null) cannot be told from a sandboxed frame on any website:"
                   " start bin/serve with --api_key and give the page the key, or --cors_origins local,null to let"
                   " every such page use the model")
        else:
            why = f"start bin/serve with --cors_origins naming it (now: {self.pages.describe()})"
        return ClientError(403, f"this server does not answer pages from {short(page, 100)}: {why}")

    @staticmethod
    async def _preflight(send, headers) -> None:
        reply = [(b"allow", b"GET, POST, OPTIONS"), (b"content-length", b"0")]
        if b"access-control-request-method" in headers:
            reply += [(b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                      (b"access-control-allow-headers",
                       headers.get(b"access-control-request-headers") or b"Content-Type, Authorization"),
                      (b"access-control-max-age", PREFLIGHT_SECONDS.encode()),
                      (b"vary", b"Access-Control-Request-Method, Access-Control-Request-Headers")]
            if headers.get(b"access-control-request-private-network", b"").lower() == b"true":
                reply.append((b"access-control-allow-private-network", b"true"))
        await send({"type": "http.response.start", "status": 204, "headers": reply})
        await send({"type": "http.response.body", "body": b""})

    def _authorized(self, header: bytes) -> bool:
        scheme, _, key = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(key.strip(), self.api_key)

    def _too_large(self) -> ClientError:
        return ClientError(413, f"the request body is larger than the server's limit of {self.max_body_bytes}"
                                " bytes (--max_body_bytes)")

    @staticmethod
    async def _refuse(scope, send, error: ClientError) -> None:
        log.warning("%s %s -> %d: %s", scope.get("method"), short(scope.get("path", "")), error.status, error.message)
        reply = error_reply(dialect_for(scope.get("path", "")), error)
        body = json.dumps(reply.body).encode("utf-8")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")] + [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Body:
    """A request's `receive`, bounded: its body in at most `limit` bytes and by `deadline` (loop time), or a
    ClientError (413 once the rest was dropped, 408); after the body, messages pass as they come."""

    def __init__(self, receive, limit: int, deadline: float, guard: Guard):
        self._receive = receive
        self._limit = limit
        self._deadline = deadline
        self._guard = guard
        self._read = 0
        self._done = False

    async def receive(self):
        if self._done:  # the disconnect a streamed reply waits for: no deadline
            return await self._receive()
        loop = asyncio.get_running_loop()
        try:
            message = await asyncio.wait_for(self._receive(), max(self._deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            self._done = True
            raise ClientError(408, f"the request body did not arrive within {self._guard.body_timeout:g} s"
                                   " (--body_timeout)") from None
        if message.get("type") != "http.request":
            self._done = True
            return message
        self._read += len(message.get("body", b""))
        self._done = not message.get("more_body")
        if self._read > self._limit:
            if not self._done:
                await _drain(self._receive, self._deadline)
            self._done = True
            raise self._guard._too_large()
        return message


async def _drain(receive, deadline: float) -> None:
    """Reads and drops what is left of a refused body (up to DRAIN_LIMIT bytes, and until the body's deadline),
    so that the client reads the refusal: closing with its bytes unread would reset the connection."""
    dropped = 0
    loop = asyncio.get_running_loop()
    while dropped <= DRAIN_LIMIT:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            return
        if message.get("type") != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def _with_headers(send, extra):
    """`send` with headers added to the reply's start."""
    async def sending(message):
        if message.get("type") == "http.response.start":
            message = dict(message, headers=list(message.get("headers") or []) + extra)
        await send(message)

    return sending
