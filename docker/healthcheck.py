#!/usr/bin/env python3
"""The container's health check: for `serve`, GET /healthz on its port answers 200 within 4 s; any other tool
(a training, say) is healthy while it runs. Reads the tool's command line from PID 1 (the entry point execs
`python3 -m kerascharrnn.cli TOOL FLAGS...`): the tool is the word after the module, never a flag's value."""

import sys
import urllib.request

MODULE = "kerascharrnn.cli"


def tool_of(args):
    """The tool PID 1 runs (None: not one of ours)."""
    if MODULE in args and args.index(MODULE) + 1 < len(args):
        return args[args.index(MODULE) + 1]
    return None


def port_of(args):
    """The port `serve` listens on (its last --port, as absl reads flags), or None if that is no port."""
    port = "8080"
    for index, arg in enumerate(args):
        if arg == "--port" and index + 1 < len(args):
            port = args[index + 1]
        elif arg.startswith("--port="):
            port = arg.split("=", 1)[1]
    return int(port) if port.isdigit() and 0 < int(port) < 65536 else None


def main(cmdline: str = "/proc/1/cmdline") -> int:
    with open(cmdline, "rb") as f:
        args = [arg.decode("utf-8", "replace") for arg in f.read().split(b"\0") if arg]
    if tool_of(args) != "serve":
        return 0
    port = port_of(args)
    if port is None:
        print("unhealthy: serve's --port is not a port number")
        return 1
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as reply:
            return 0 if reply.status == 200 else 1
    except OSError as error:
        print(f"unhealthy: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
