"""bin/benchmark's machinery (named apart from the repository's benchmarks/, which holds measurement scripts that
are not installed): `report` runs the measurements and writes the tables; `worker` is one
measurement in a process of its own; `torch_peer` is the PyTorch model it is compared with.

Installed with the package so that `kerascharrnn-benchmark` works from a wheel; it calls the library
and `python -m` entry points, never a path into a checkout. PyTorch is only imported by the peer
worker (pip install 'kerascharrnn[bench]').
"""
