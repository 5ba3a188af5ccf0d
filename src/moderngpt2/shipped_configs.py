"""The DeepSpeed, Accelerate and training configs that ship inside the package (`moderngpt2 configs`).

They are package data, so they are reachable after `pip install` from any directory: `train --deepspeed
zero2` names one directly, and `moderngpt2 configs --copy` writes them all into ./configs (the Accelerate
files refer to the DeepSpeed ones as `configs/...`, so launch from the directory that holds ./configs).

    moderngpt2 configs                      # list them
    moderngpt2 configs --copy               # copy them into ./configs
    moderngpt2 configs --copy mydir --name zero2
"""

import os
import shutil
from importlib import resources

from .errors import UserError
from .fileio import make_directory, user_error_from

# Short names accepted by `train --deepspeed NAME`.
DEEPSPEED_NAMES = {"zero1": "ds_config_zero1.json", "zero2": "ds_config_zero2.json",
                   "zero3": "ds_config_zero3.json", "tp2": "ds_config_tp2.json"}


def config_directory():
    return resources.files("moderngpt2") / "configs"


def shipped_files() -> list[str]:
    """File names of the shipped configs, sorted."""
    return sorted(entry.name for entry in config_directory().iterdir()
                  if entry.is_file() and entry.name.endswith((".json", ".yaml")))


def shipped_path(name: str) -> str:
    """The path of a shipped config, by file name or DeepSpeed short name."""
    file_name = DEEPSPEED_NAMES.get(name, name)
    if file_name not in shipped_files():
        raise UserError(f"no shipped config named {name!r}; `moderngpt2 configs` lists them "
                        f"(DeepSpeed short names: {', '.join(DEEPSPEED_NAMES)})")
    return os.fspath(config_directory() / file_name)


def copy_shipped(names: list[str], directory: str, overwrite: bool = False) -> list[str]:
    """Copy the shipped configs `names` into `directory`; returns the written paths.

    Nothing is written when a file of the same name is there already (unless `overwrite`)."""
    make_directory(directory, "--copy")
    kept = [name for name in names if os.path.exists(os.path.join(directory, name)) and not overwrite]
    if kept:
        raise UserError(f"{directory} already holds {', '.join(kept)}; pass --overwrite to replace them")
    written = []
    for name in names:
        target = os.path.join(directory, name)
        try:
            shutil.copyfile(shipped_path(name), target)
        except OSError as error:
            raise user_error_from(error, directory) from None
        written.append(target)
    return written
