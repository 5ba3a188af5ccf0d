"""Command-line parsing rules shared by every subcommand.

- No abbreviations: `--learning_rat` is not taken for `--learning_rate` (a typo must not silently pick a
  flag, and an abbreviation accepted today breaks when a new flag shares its prefix).
- A parse error is one line (a UserError, printed by the command line with exit status 2), not argparse's
  usage block, and an unknown flag comes with the closest known ones: "did you mean --learning_rate?".
"""

import argparse
import difflib
import re

from .errors import UserError


def known_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings if option.startswith("--")]


def suggestion(flag: str, parser: argparse.ArgumentParser) -> str:
    """' (did you mean --x?)' for the known flags closest to `flag`, else ''."""
    name = flag.split("=", 1)[0]
    candidates = known_flags(parser)
    # Compare in one spelling, so `--learning-rat` finds `--learning_rate` as well as `--learning-rate`.
    normalised = {}
    for option in candidates:
        normalised.setdefault(option.replace("-", "_"), option)
    close = difflib.get_close_matches(name.replace("-", "_"), list(normalised), n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(normalised[c] for c in close)}?)" if close else ""


def unknown_flags_error(words: list[str], parser: argparse.ArgumentParser) -> UserError:
    """The error for words no flag took: the unknown flags among them (their values need no mention)."""
    flags = [word for word in words if word.startswith("-")] or words
    described = "; ".join(f"{flag}{suggestion(flag, parser)}" for flag in flags)
    return UserError(f"unknown argument(s): {described}; see '{parser.prog} --help'")


class OneLineErrors:
    """Mix-in for argparse parsers: errors become a UserError with a 'did you mean' for unknown flags."""

    def error(self, message):
        match = re.match(r"unrecognized arguments: (.*)", message)
        if match:
            raise unknown_flags_error(match.group(1).split(), self)
        raise UserError(message)


class CommandParser(OneLineErrors, argparse.ArgumentParser):
    """The parser of a subcommand: no abbreviations, one-line errors."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
