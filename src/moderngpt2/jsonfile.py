"""Reading the JSON files users hand us (configs, manifests, vocabularies) with one-line errors."""

import json
import os

from .errors import UserError


def read_json_object(path, what: str) -> dict:
    """The JSON object in `path`; a file that is not valid JSON, or holds no object, is a UserError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{os.fspath(path)}: not a valid {what} ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{os.fspath(path)}: not a valid {what} (expected a JSON object)")
    return data
