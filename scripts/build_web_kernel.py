"""Compiles kerascharrnn/export/matvec.wat (WebAssembly text) with wabt's wat2wasm and writes the bytes, in base64, into
kerascharrnn/export/runtime.js's MATVEC_WASM line: the runtime carries its kernel, so an export needs no npm and a
page opened from file:// fetches nothing. Run after editing matvec.wat (needs npm, once, to fetch wabt):
    python3 scripts/build_web_kernel.py
"""

import base64
import os
import re
import subprocess
import sys
import tempfile

WABT = "wabt@1.0.39"  # Apache-2.0; a build tool only: nothing of it ships
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB = os.path.join(REPO, "kerascharrnn", "export")


def main() -> int:
    tools = os.path.join(os.path.expanduser("~"), ".cache", "kerascharrnn-wabt")
    wat2wasm = os.path.join(tools, "node_modules", ".bin", "wat2wasm")
    if not os.path.exists(wat2wasm):
        subprocess.run(["npm", "install", "--silent", "--prefix", tools, WABT], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        wasm = os.path.join(tmp, "matvec.wasm")
        subprocess.run([wat2wasm, os.path.join(WEB, "matvec.wat"), "-o", wasm], check=True)
        encoded = base64.b64encode(open(wasm, "rb").read()).decode()
    runtime = os.path.join(WEB, "runtime.js")
    text = open(runtime, encoding="utf-8").read()
    line = re.compile(r'^  const MATVEC_WASM = "[A-Za-z0-9+/=]*";$', re.M)
    if len(line.findall(text)) != 1:
        print(f"{runtime}: no single MATVEC_WASM line to replace", file=sys.stderr)
        return 1
    with open(runtime, "w", encoding="utf-8") as f:
        f.write(line.sub(f'  const MATVEC_WASM = "{encoded}";', text))
    print(f"{runtime}: MATVEC_WASM = {len(encoded)} base64 characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
