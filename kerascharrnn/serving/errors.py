"""A client's mistake, answered in the error shape of the API it called.

bin/serve speaks several APIs, each with its clients' expectations of an error reply:

  torch-rnn-server's and our JSON API    {"message": "..."}            (rnn-writer shows the message)
  OpenAI's (/v1/...)                      {"error": {"message", "type", "param", "code"}}
  Ollama's (/api/...)                     {"error": "..."}
  KoboldCpp's (/api/v1/..., /api/extra/...) {"detail": {"msg", "type"}}
  llama.cpp server's (/completion, ...)   {"error": {"code", "message", "type"}}

A request's path says which it called (`dialect_for`); every error reply, whatever raised it, is built here.
"""

import dataclasses
from typing import Dict, Optional

OPENAI, OLLAMA, KOBOLD, LLAMACPP, MESSAGE = "openai", "ollama", "koboldcpp", "llamacpp", "message"
_KOBOLD_PREFIXES = ("/api/v1/", "/api/extra/", "/api/latest/")
LLAMACPP_PATHS = ("/completion", "/tokenize", "/detokenize", "/props", "/health", "/infill", "/apply-template")


class ClientError(Exception):
    """A request the server will not run, with the status to answer it with.

    Args:
      status: the HTTP status (4xx for the client's mistakes).
      message: what is wrong, for the client.
      param: the request field at fault, if one is (OpenAI's error names it).
      code: a machine-readable code (OpenAI's: "invalid_api_key", "model_not_found", ...).
      headers: extra reply headers (Retry-After on a 429).
    """

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def dialect_for(path: str) -> str:
    """Which API a request path belongs to."""
    if path.startswith(_KOBOLD_PREFIXES):
        return KOBOLD
    if path.startswith("/api/") or path == "/api":
        return OLLAMA
    if path.startswith("/v1/") and path != "/v1/generate":
        return OPENAI
    if path in LLAMACPP_PATHS:
        return LLAMACPP
    return MESSAGE


def _openai_type(status: int) -> str:
    if status == 429:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


# llama.cpp server's error types by status (its format_error_response)
_LLAMACPP_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 501: "not_supported_error", 503: "unavailable_error"}
# KoboldCpp's
_KOBOLD_TYPES = {401: "unauthorized", 503: "service_unavailable", 429: "service_unavailable"}


@dataclasses.dataclass(frozen=True)
class ErrorReply:
    status: int
    body: dict
    headers: Dict[str, str]


def error_reply(dialect: str, error: ClientError) -> ErrorReply:
    """The reply to `error` in `dialect`'s shape."""
    if dialect == OPENAI:
        body = {"error": {"message": error.message, "type": _openai_type(error.status), "param": error.param,
                          "code": error.code}}
    elif dialect == OLLAMA:
        body = {"error": error.message}
    elif dialect == KOBOLD:
        body = {"detail": {"msg": error.message, "type": _KOBOLD_TYPES.get(error.status, "bad_input")}}
    elif dialect == LLAMACPP:
        kind = _LLAMACPP_TYPES.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
        body = {"error": {"code": error.status, "message": error.message, "type": kind}}
    else:
        body = {"message": error.message}
    return ErrorReply(error.status, body, error.headers)
