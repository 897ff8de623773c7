"""The names of the files one training run writes under its checkpoint name, in one place.

    {name}_{iteration}.keras  .state.npz  .json    a checkpoint (the .json last: it marks it complete)
    {name}_best.keras  .state.npz  .json           the checkpoint with the lowest val loss
    {name}_loss.png                                the loss plot
    {name}.lock                                    the run's lock (io/lock.py)

No I/O here: io/checkpoint.py reads and writes the checkpoints, io/paths.py keeps the series off a
run's inputs, io/lock.py holds the lock.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional, Union

BEST = "best"
CHECKPOINT_EXTENSIONS = (".keras", ".state.npz", ".json")
LOSS_PLOT_SUFFIX = "_loss.png"
LOCK_SUFFIX = ".lock"
# bin/train's iteration counter fits in 10 digits (its flags stop at 2^31 - 1)
_LONGEST_TAG = "9" * 10


@dataclasses.dataclass(frozen=True)
class CheckpointPaths:
    """The three files of one checkpoint."""

    model: str
    state: str
    json: str


@dataclasses.dataclass(frozen=True)
class Series:
    """The files under one checkpoint name (a path prefix such as "cv/checkpoint")."""

    name: str

    def checkpoint(self, tag: Union[int, str]) -> CheckpointPaths:
        """The checkpoint of an iteration, or of BEST."""
        model, state, record = (f"{self.name}_{tag}{ext}" for ext in CHECKPOINT_EXTENSIONS)
        return CheckpointPaths(model=model, state=state, json=record)

    @property
    def loss_plot(self) -> str:
        return self.name + LOSS_PLOT_SUFFIX

    @property
    def lock(self) -> str:
        return self.name + LOCK_SUFFIX

    @property
    def longest_file_name(self) -> str:
        """The longest name the series can hold (for the file system's name limit)."""
        return f"{self.name}_{_LONGEST_TAG}.state.npz"

    def json_glob(self) -> str:
        """A glob pattern matching (a superset of) the series' checkpoint records."""
        import glob

        return glob.escape(self.name) + "_*.json"

    def iteration_of_record(self, path: str) -> Optional[int]:
        """The iteration of a checkpoint record of this series named `path`, or None if it is not one."""
        match = re.fullmatch(re.escape(os.path.basename(self.name)) + r"_(\d+)\.json", os.path.basename(path))
        return int(match.group(1)) if match else None

    def file_pattern(self) -> "re.Pattern":
        """Matches every path the series writes (compare real paths with the series of the real name)."""
        extensions = "|".join(re.escape(ext) for ext in CHECKPOINT_EXTENSIONS)
        return re.compile(re.escape(self.name) + rf"(_(\d+|{BEST})({extensions})|{re.escape(LOSS_PLOT_SUFFIX)}"
                          rf"|{re.escape(LOCK_SUFFIX)})$")


def name_of_record(path: str) -> Optional[str]:
    """The checkpoint name whose series holds a record file, from where the file is and its name (not from
    what it says): /runs/cv/ck_40.json or /runs/cv/ck_best.json -> /runs/cv/ck; None for another name."""
    match = re.fullmatch(rf"(.*)_(\d+|{BEST})\.json", os.path.basename(path), re.DOTALL)  # "cv/" writes cv/_2.json
    return os.path.join(os.path.dirname(os.path.abspath(path)), match.group(1)) if match else None
