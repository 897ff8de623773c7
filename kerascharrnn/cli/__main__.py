"""Every tool behind one command: `python3 -m kerascharrnn.cli TOOL [flags]` (the container's entry point).

    python3 -m kerascharrnn.cli train --input_h5 data/my.h5 --max_epochs 3
    python3 -m kerascharrnn.cli --help
"""

import importlib
import sys
from typing import Optional, Sequence

# the tools, in the order of the workflow (each is kerascharrnn/cli/NAME.py with main(argv) -> int)
TOOLS = ("preprocess", "train", "sample", "eval", "export", "serve", "convert", "novelty", "benchmark")


def usage() -> str:
    return (f"usage: kerascharrnn TOOL [flags]   (TOOL --help for a tool's flags)\n"
            f"tools: {', '.join(TOOLS)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if len(argv) >= 2 else sys.stderr)
        return 0 if len(argv) >= 2 else 2
    tool = argv[1]
    if tool not in TOOLS:
        print(f"kerascharrnn: error: no tool {tool[:100]!r}; the tools: {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"kerascharrnn.cli.{tool}").main([f"kerascharrnn {tool}", *argv[2:]])


if __name__ == "__main__":
    sys.exit(main())
