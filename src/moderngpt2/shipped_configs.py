"""`moderngpt2 configs`: the DeepSpeed, Accelerate and training configs that ship inside the package.

They are package data, so they are reachable after `pip install` from any directory: `train --deepspeed
zero2` names one directly, and `moderngpt2 configs --copy` writes them all into ./configs (the Accelerate
files refer to the DeepSpeed ones as `configs/...`, so launch from the directory that holds ./configs).

    moderngpt2 configs                      # list them
    moderngpt2 configs --copy               # copy them into ./configs
    moderngpt2 configs --copy mydir --name zero2
"""

import argparse
import os
import shutil
from importlib import resources

from .argparsing import CommandParser
from .data.arguments import add_flag
from .errors import UserError
from .fileio import make_directory, user_error_from

# Short names accepted by `train --deepspeed NAME`.
DEEPSPEED_NAMES = {"zero1": "ds_config_zero1.json", "zero2": "ds_config_zero2.json",
                   "zero3": "ds_config_zero3.json", "tp2": "ds_config_tp2.json"}


def config_directory():
    return resources.files("moderngpt2") / "configs"


def shipped_files() -> list[str]:
    return sorted(entry.name for entry in config_directory().iterdir()
                  if entry.is_file() and entry.name.endswith((".json", ".yaml")))


def shipped_path(name: str) -> str:
    """The path of a shipped config, by file name or DeepSpeed short name."""
    file_name = DEEPSPEED_NAMES.get(name, name)
    if file_name not in shipped_files():
        raise UserError(f"no shipped config named {name!r}; `moderngpt2 configs` lists them "
                        f"(DeepSpeed short names: {', '.join(DEEPSPEED_NAMES)})")
    return os.fspath(config_directory() / file_name)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="moderngpt2 configs", description=__doc__.splitlines()[0])
    add_flag(parser, "--copy", nargs="?", const="configs", default=None, metavar="DIR",
             help="copy the configs into DIR (default ./configs); existing files are kept unless --overwrite")
    add_flag(parser, "--name", nargs="+", default=None, help="only these configs (file or short names)")
    add_flag(parser, "--overwrite", action="store_true", help="replace files of the same name in DIR")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = [os.path.basename(shipped_path(name)) for name in args.name] if args.name else shipped_files()
    if args.copy is None:
        short = {file_name: name for name, file_name in DEEPSPEED_NAMES.items()}
        for name in names:
            alias = f"  (train --deepspeed {short[name]})" if name in short else ""
            print(f"{shipped_path(name)}{alias}")
        return 0
    make_directory(args.copy, "--copy")
    kept = [name for name in names if os.path.exists(os.path.join(args.copy, name)) and not args.overwrite]
    if kept:
        raise UserError(f"{args.copy} already holds {', '.join(kept)}; pass --overwrite to replace them")
    for name in names:
        try:
            shutil.copyfile(shipped_path(name), os.path.join(args.copy, name))
        except OSError as error:
            raise user_error_from(error, args.copy) from None
        print(os.path.join(args.copy, name))
    return 0
