"""bin/serve's HTTP layer: uvicorn's h11 protocol, with malformed requests answered in JSON too."""

import collections
import json

from kerascharrnn import upstream
from kerascharrnn.config import ServeConfig
from kerascharrnn.serving.app import log

# Request line plus headers that h11 buffers before giving up (its default is 16 KiB). Larger, so that
# a long query string (a 1 MB start_text) reaches the application, which answers it with a JSON 413
# naming the limit; beyond this the connection gets the JSON 400 below.
MAX_REQUEST_HEAD_BYTES = 4 * 2**20
_LINGER_SECONDS = 2.0


def server_config(application, host: str, port: int, config, log_level: str = "info"):
    """The uvicorn configuration bin/serve runs with (and the tests' servers): the h11 protocol below, bounded
    request heads, connections and log lines."""
    import uvicorn

    # uvicorn's access log would write every request line whole (a client could fill the disk): ours is bounded
    return uvicorn.Config(application, host=host, port=port, log_level=log_level, access_log=False,
                          http=http_protocol_class(config.head_timeout, config.max_idle_connections),
                          h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)


def http_protocol_class(head_timeout: float = ServeConfig.head_timeout,
                        max_idle: int = ServeConfig.max_idle_connections):
    """uvicorn's h11 protocol (upstream.h11_protocol_class), with its plain-text "Invalid HTTP request
    received." 400 replaced by a JSON body with a "message" (rnn-writer shows `{}` for a body without one).

    A connection is closed when a request's line and headers take longer than `head_timeout` seconds to arrive
    (from the connection, or from the first byte of the next request on a kept-alive one): uvicorn waits for
    them forever, so a stalled or slowloris client could hold a connection, and up to 4 MiB of buffered head,
    for as long as it liked. And when more than `max_idle` connections wait for their heads at once, the oldest
    is closed: stalled clients crowd out each other, never the clients that send a request.

    h11 is chosen explicitly: uvicorn's "auto" would take httptools where installed, whose limits and replies
    differ."""
    import h11

    class JsonErrorH11Protocol(upstream.h11_protocol_class()):
        awaiting_head: "collections.OrderedDict" = collections.OrderedDict()  # this server's, oldest first

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._reason = ""
            self._discarding = False
            self._head_timer = None
            upstream.keep_h11_error_reason(self.conn, self._keep_reason)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_head()

        def connection_lost(self, exc) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            if self._head_timer is None and self.conn.their_state is h11.IDLE:
                self._head_timer = self.loop.call_later(head_timeout, self._head_too_slow)
                self.awaiting_head[self] = None
                if len(self.awaiting_head) > max_idle:
                    oldest = next(iter(self.awaiting_head))
                    log.warning("closed a connection from %s: more than %d connections were waiting for their"
                                " request heads", (oldest.client or ("?",))[0], max_idle)
                    oldest._stop_head_timer()
                    oldest.transport.close()

        def _stop_head_timer(self) -> None:
            self.awaiting_head.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            self.awaiting_head.pop(self, None)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.warning("closed a connection from %s: no whole request head within %g s",
                            (self.client or ("?",))[0], head_timeout)
                self.transport.close()

        def _keep_reason(self, error: Exception) -> None:  # the client should see why
            self._reason = str(error)

        def send_400_response(self, msg: str) -> None:
            reason = self._reason or msg
            message = f"malformed HTTP request ({reason}); the server reads HTTP/1.1 with a request line and" \
                      f" headers of at most {MAX_REQUEST_HEAD_BYTES // 2**20} MiB"
            log.warning("malformed request from %s: %s", (self.client or ("?",))[0], reason)
            body = json.dumps({"message": message}).encode("utf-8")
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
            # A lingering close (as nginx does): closing with the client's bytes still unread makes the
            # kernel send a reset, which can destroy the reply before the client reads it. So stop
            # writing, discard what still arrives, and close when the client is done (or in 2 s).
            self._discarding = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return
            self._await_head()  # bytes of a new request (after a response on a kept-alive connection)
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # its head arrived
                self._stop_head_timer()

        def eof_received(self):
            if self._discarding:
                self.transport.close()
            else:
                return super().eof_received()

    return JsonErrorH11Protocol
