#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian/Ubuntu machine: the package with TensorFlow and its test
# extras; the lite install (no TensorFlow) in a virtual environment of its own, .venv-lite/ in the checkout (ignored
# by git; an editable install, so it runs this checkout's source), which tests/test_lite.py serves from; and from
# the system's packages the browser the writing page is tested in (Chromium and its driver), the Node.js that runs
# rnn-writer's client code, make, and Python's venv module. apt-get runs only for what is missing (with sudo
# unless root).
set -Eeuo pipefail
# a step that fails says which, and where: the script never stops without a line
trap 'echo "setup_tests: FAILED at line $LINENO (exit $?): $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v make >/dev/null 2>&1 || missing+=(make)  # the container workflow's Makefile is tested (no engine needed)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)  # Debian splits it off
if [ ${#missing[@]} -gt 0 ]; then
  sudo=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi
python3 -m pip install -q -e ".[tf,test]"
LITE_VENV=.venv-lite  # (tests/test_lite.py looks for it here)
[ -x "$LITE_VENV/bin/python" ] || python3 -m venv "$LITE_VENV"
"$LITE_VENV/bin/python" -m pip install -q -e ".[lite]"
