"""Prints the package's requirements from setup.cfg, the one place they are written: install_requires and the
extras named on the command line (the image's dependency layer, built before the source is copied).

    python3 docker/requirements.py setup.cfg tf,serve        # what the CPU image installs
    python3 docker/requirements.py setup.cfg lite            # the serving image (no TensorFlow)
    python3 docker/requirements.py setup.cfg tf,serve,gpu    # the GPU variant
"""

import configparser
import sys


def requirements(setup_cfg: str, extras: str) -> list:
    config = configparser.ConfigParser()
    if not config.read(setup_cfg):
        raise SystemExit(f"requirements.py: error: cannot read {setup_cfg}")
    lines = config.get("options", "install_requires").splitlines()
    for extra in filter(None, extras.split(",")):
        if not config.has_option("options.extras_require", extra):
            raise SystemExit(f"requirements.py: error: no extra {extra!r} in {setup_cfg}")
        lines += config.get("options.extras_require", extra).splitlines()
    wanted = [line.strip() for line in lines if line.strip()]
    if any(line.startswith("tensorflow[") for line in wanted):  # the GPU extra replaces plain tensorflow
        wanted = [line for line in wanted if not line.startswith(("tensorflow>", "tensorflow="))]
    return list(dict.fromkeys(wanted))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")))
