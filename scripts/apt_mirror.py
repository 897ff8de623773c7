#!/usr/bin/env python3
"""The Debian archive this machine's apt uses, read as apt reads its sources: /etc/apt/sources.list and the
files of /etc/apt/sources.list.d/ named *.list (one-line form: `deb [options] URI suite components`) or *.sources
(deb822 form: stanzas of `Types:`, `URIs:`, `Enabled:`); other files there (`.save`, `.disabled`, ...), comments,
`deb-src` entries and disabled stanzas are not sources. Prints the first http(s) URI of a `deb` source; exits 1
with a line saying why if there is none. scripts/check_containers.sh makes its base image from it.

    python3 scripts/apt_mirror.py [--root /]
"""

import argparse
import os
import sys
from typing import Iterator, List


def one_line_uris(text: str) -> Iterator[str]:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if words:
            yield words[0]


def deb822_uris(text: str) -> Iterator[str]:
    stanzas: List[dict] = [{}]
    key = None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanzas[-1]:
                stanzas.append({})
            key = None
            continue
        if line[0] in " \t" and key:  # a folded continuation
            stanzas[-1][key] += " " + line.strip()
            continue
        name, _, value = line.partition(":")
        key = name.strip().lower()
        stanzas[-1][key] = value.strip()
    for stanza in stanzas:
        if "deb" in stanza.get("types", "").split() and stanza.get("enabled", "yes").lower() != "no":
            yield from stanza.get("uris", "").split()


def source_uris(root: str = "/") -> Iterator[str]:
    """Every URI of an active `deb` source, in apt's order of files."""
    apt = os.path.join(root, "etc", "apt")
    main = os.path.join(apt, "sources.list")
    if os.path.isfile(main):
        yield from one_line_uris(_read(main))
    parts = os.path.join(apt, "sources.list.d")
    names = sorted(os.listdir(parts)) if os.path.isdir(parts) else []
    for name in names:
        path = os.path.join(parts, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".list"):
            yield from one_line_uris(_read(path))
        elif name.endswith(".sources"):
            yield from deb822_uris(_read(path))


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/", help="The file system's root (a test lays one out elsewhere).")
    args = parser.parse_args()
    for uri in source_uris(args.root):
        if uri.startswith(("http://", "https://")):
            print(uri)
            return 0
    print(f"apt_mirror: no active deb source with an http(s) URI in {os.path.join(args.root, 'etc', 'apt')}"
          " (sources.list, sources.list.d/*.list or *.sources)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
