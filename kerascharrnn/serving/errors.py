"""A client's mistake, answered in the error shape of the API it called.

bin/serve speaks several APIs, each with its clients' expectations of an error reply:

  torch-rnn-server's and our JSON API   {"message": "..."}            (rnn-writer shows the message)
  OpenAI's (/v1/completions, /v1/models) {"error": {"message", "type", "param", "code"}}
  Ollama's (/api/...)                    {"error": "..."}

A request's path says which it called (`dialect_for`); every error reply, whatever raised it, is built here.
"""

import dataclasses
from typing import Dict, Optional

OPENAI, OLLAMA, MESSAGE = "openai", "ollama", "message"
_OPENAI_PATHS = ("/v1/completions", "/v1/models", "/v1/chat/", "/v1/embeddings")


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
    if path.startswith("/api/") or path == "/api":
        return OLLAMA
    if path.startswith(_OPENAI_PATHS) or path == "/v1/completions":
        return OPENAI
    return MESSAGE


def _openai_type(status: int) -> str:
    if status == 429:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


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
    else:
        body = {"message": error.message}
    return ErrorReply(error.status, body, error.headers)
