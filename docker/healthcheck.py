#!/usr/bin/env python3
"""The container's health check: for `serve`, GET /healthz on its port answers 200 within 4 s; any other tool
(a training, say) is healthy while it runs. Reads the tool's command line from PID 1 (the entry point execs it)."""

import sys
import urllib.request


def port_of(args):
    port = "8080"
    for index, arg in enumerate(args):
        if arg == "--port" and index + 1 < len(args):
            port = args[index + 1]
        elif arg.startswith("--port="):
            port = arg.split("=", 1)[1]
    return port


def main() -> int:
    with open("/proc/1/cmdline", "rb") as cmdline:
        args = [arg.decode("utf-8", "replace") for arg in cmdline.read().split(b"\0") if arg]
    if "serve" not in args:
        return 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port_of(args)}/healthz", timeout=4) as reply:
            return 0 if reply.status == 200 else 1
    except OSError as error:
        print(f"unhealthy: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
