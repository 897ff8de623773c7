"""Which web pages may use the model: bin/serve's answer to a browser's cross-origin requests (CORS).

A browser sends every request a page makes to another address with the page's `Origin`; it gives the page the
reply only if the reply allows that origin (Access-Control-Allow-Origin), and for a request with a JSON body or
an Authorization header it first asks (a preflight, OPTIONS). So the origins a server allows decide which pages
can use it: the writer's own frontends, and not the websites the writer visits, which could otherwise run the
model and read what it writes (a model trained on the writer's own text can repeat it).

What the servers writers' frontends are built for do: llama.cpp's server allows every origin (its replies echo
any Origin; since 2026 `--cors-origins` can narrow it); KoboldCpp sends `*`; Ollama allows only pages on this
machine's loopback names (localhost, 127.0.0.1 and 0.0.0.0, any port) and the schemes of desktop apps and editor
webviews, and refuses the rest (403) — `Origin: null` included, so a page opened from a file needs OLLAMA_ORIGINS.

Ours, `--cors_origins local` (the default), is Ollama's, with `null` decided by the API key:
  - pages on a loopback address, any scheme and port: http(s)://localhost, *.localhost, 127.0.0.0/8, [::1];
  - desktop apps, editor webviews and browser extensions (app:, tauri:, vscode-webview:, vscode-file:,
    chrome-extension:, moz-extension:, safari-web-extension:): installed by the writer, no website has them;
  - pages opened from a file (`Origin: null`) only on a server with an API key. A sandboxed frame on any website
    sends `null` too, and nothing in the request tells the two apart: without a key, allowing `null` would let
    every website use the model. With a key, the key decides (a website does not know it).
`--cors_origins` takes a comma-separated list of: `local`, `null` (pages opened from a file, and sandboxed
frames anywhere), `*` (every page), `none` (no page but the server's own), and origins such as
`https://writer.example` or `http://192.168.1.20:*` (any port). A request from a page the list does not allow is
refused with 403 before any work is done (a form or a `text/plain` POST needs no preflight: its request would
otherwise reach the model). A page of the server's own origin (the writing page) is always allowed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from typing import FrozenSet, Tuple

from kerascharrnn.errors import UserError

DEFAULT = "local"
APP_SCHEMES = ("app", "tauri", "vscode-webview", "vscode-file", "chrome-extension", "moz-extension",
               "safari-web-extension")
_KEYWORDS = ("local", "null", "*", "none")


def _loopback_host(host: str) -> bool:
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def local_origin(origin: str) -> bool:
    """A page on this machine: a loopback address (http or https, any port), or a desktop app's or extension's."""
    try:
        parts = urllib.parse.urlsplit(origin)
        host = parts.hostname or ""
    except ValueError:
        return False
    if parts.scheme in APP_SCHEMES:
        return True
    return parts.scheme in ("http", "https") and not parts.path and _loopback_host(host)


def _normalized(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


@dataclasses.dataclass(frozen=True)
class OriginPolicy:
    """The pages a server answers.

    Attributes:
      local: pages on loopback addresses and local apps (local_origin).
      null: pages opened from a file (and sandboxed frames): `Origin: null`.
      every: every origin.
      origins: exact origins ("scheme://host[:port]", lower-case).
      any_port: origins allowed on any port ("scheme://host:").
    """

    local: bool = True
    null: bool = False
    every: bool = False
    origins: FrozenSet[str] = frozenset()
    any_port: Tuple[str, ...] = ()

    @classmethod
    def parse(cls, setting: str, keyed: bool, flag: str = "--cors_origins") -> "OriginPolicy":
        """The policy for a --cors_origins value on a server with (keyed) or without an API key. Raises UserError
        for an entry that is no origin."""
        entries = [_normalized(e) for e in setting.split(",") if e.strip()]
        origins, any_port = set(), []
        for entry in entries:
            if entry in _KEYWORDS:
                continue
            parts = urllib.parse.urlsplit(entry)
            if entry.endswith(":*") and parts.scheme in ("http", "https") and "://" in entry:
                any_port.append(entry[:-1])
            elif parts.scheme and parts.netloc and not parts.path and not parts.query:
                origins.add(entry)
            else:
                raise UserError(f"{flag}: {entry[:80]!r} is not an origin (scheme://host[:port], scheme://host:*) nor"
                                f" one of {', '.join(_KEYWORDS)}")
        if "none" in entries and len(entries) > 1:
            raise UserError(f"{flag}: `none` stands alone")
        local = "local" in entries
        return cls(local=local, null="null" in entries or (local and keyed), every="*" in entries,
                   origins=frozenset(origins), any_port=tuple(any_port))

    def allows(self, origin: str) -> bool:
        origin = _normalized(origin)
        if self.every:
            return True
        if origin == "null":
            return self.null
        return (self.local and local_origin(origin)) or origin in self.origins or \
            any(origin.startswith(prefix) and origin[len(prefix):].isdigit() for prefix in self.any_port)

    def describe(self) -> str:
        """For the start-up line: which pages may use the model."""
        if self.every:
            return "every web page (--cors_origins *)"
        parts = ["pages on this machine's loopback addresses and local apps"] if self.local else []
        parts += ["pages opened from a file"] if self.null else []
        parts += sorted(self.origins) + [prefix + "*" for prefix in self.any_port]
        return ", ".join(parts) if parts else "no other page than its own (--cors_origins none)"


def same_origin(origin: str, host: str) -> bool:
    """The page was served by this server (its own writing page): its origin is this server's address."""
    origin = _normalized(origin)
    host = host.strip().lower()
    return bool(host) and origin in (f"http://{host}", f"https://{host}")
