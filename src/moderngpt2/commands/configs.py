"""`moderngpt2 configs`: list the shipped DeepSpeed/Accelerate/training configs, or copy them out."""

import os
from dataclasses import dataclass

from ..arguments import arg, parse_command
from ..shipped_configs import DEEPSPEED_NAMES, copy_shipped, shipped_files, shipped_path


@dataclass
class ConfigsArguments:
    copy: str | None = arg(None, "copy the configs into DIR (./configs when DIR is left out); existing files are "
                                 "kept unless --overwrite", nargs="?", const="configs", metavar="DIR")
    name: list[str] | None = arg(None, "only these configs (file or short names)")
    overwrite: bool = arg(False, "replace files of the same name in DIR")


def main(argv: list[str]) -> int:
    (args,) = parse_command("moderngpt2 configs", [ConfigsArguments], argv,
                            description="List the configs that ship inside the package, or copy them out.")
    names = [os.path.basename(shipped_path(name)) for name in args.name] if args.name else shipped_files()
    if args.copy is None:
        short = {file_name: name for name, file_name in DEEPSPEED_NAMES.items()}
        for name in names:
            alias = f"  (train --deepspeed {short[name]})" if name in short else ""
            print(f"{shipped_path(name)}{alias}")
        return 0
    for path in copy_shipped(names, args.copy, overwrite=args.overwrite):
        print(path)
    return 0
