"""Writing and checking the files we produce, so that a filesystem fault costs nothing already written.

Every file we write under its final name goes through ``atomic_write``: the bytes go to a temporary file
in the same directory, are flushed to the disk, and only then renamed over the final name. A full disk,
a read-only directory or a kill in between leaves the previous file (or none) under that name, never a
half-written one.

``os_error_message`` turns the filesystem errors a user can fix (no space, read-only, a file where a
directory should be) into one line naming the place; the command line uses it for every ``OSError`` that
reaches it, wherever it was raised (our writers, the Trainer's checkpoint saves, tokenizer saves).
"""

import contextlib
import errno
import json
import os
import shutil
import re
import struct
import tempfile

from .errors import UserError

NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
LOW_SPACE_BYTES = 1 << 20


def _directory_of(path: str) -> str:
    """The directory a fault at ``path`` is about: the path itself when it is one, else its parent."""
    path = _existing_parent(path)
    return path if os.path.isdir(path) else os.path.dirname(path)


def os_error_message(error: OSError, path: str | None = None) -> str | None:
    """One line for a filesystem fault a user can fix, or None for any other OSError."""
    path = path or error.filename
    place = _directory_of(os.fspath(path)) if path else "the output location"
    path = os.fspath(path) if path else place
    if error.errno in NO_SPACE:
        return f"no space left on {place}: free some space or write somewhere else"
    if error.errno in READ_ONLY:
        return f"{place} is read-only: choose a writable output location"
    if error.errno == errno.ENOTDIR:
        return f"{path}: part of this path is a file, not a directory: choose another output path"
    if error.errno == errno.EEXIST:
        return f"{path} already exists and is not a directory: choose another output path"
    if error.errno == errno.EISDIR:
        return f"{path} is a directory, not a file: give a file path"
    if error.errno == errno.EFBIG:
        return f"{path}: file too large for this filesystem or process limit"
    return None


def filesystem_fault(error: BaseException, path: str | None = None) -> str | None:
    """`os_error_message` for any exception a writer raised while writing under `path`.

    Writers in Rust and C++ do not raise OSError: safetensors says "... (os error 28)" in a SafetensorError,
    and torch.save only "unexpected pos ..." in a RuntimeError. The errno in the text is used when there is
    one; otherwise a filesystem left with (almost) no free space is what failed the write.
    """
    if isinstance(error, OSError):
        return os_error_message(error, path)
    found = re.search(r"\(os error (\d+)\)|\[Errno (\d+)\]", str(error))
    if found:
        return os_error_message(OSError(int(found.group(1) or found.group(2)), str(error)), path)
    if path is not None:
        with contextlib.suppress(OSError):
            if shutil.disk_usage(_existing_parent(path)).free < LOW_SPACE_BYTES:
                return os_error_message(OSError(errno.ENOSPC, "no space"), path)
    return None


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def user_error_from(error: BaseException, path: str | None = None) -> BaseException:
    """The UserError for a fault a user can fix, else the original error (a bug or a hardware fault)."""
    message = filesystem_fault(error, path)
    return UserError(message) if message else error


def make_directory(path: str, flag: str) -> None:
    """``os.makedirs(path)``, then a probe that it takes files: a file in the way, a read-only or full
    filesystem is a one-line error naming ``flag`` before any work is done."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file, not a directory: choose another path")
    try:
        os.makedirs(path, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(descriptor)
        os.remove(probe)
    except OSError as error:
        raise user_error_from(error, path) from None


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    """Yield a file to write; on success it replaces ``path`` whole, on any failure ``path`` is untouched.

    ``mode`` is "w" (text, UTF-8) or "wb". Filesystem faults become a one-line UserError.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        descriptor, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise user_error_from(error, directory) from None
    try:
        with os.fdopen(descriptor, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        _remove_quietly(tmp)
        raise user_error_from(error, path) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def replace_directory(staging: str, final: str) -> None:
    """Put a fully written directory under its final name; an earlier one there is removed only afterwards."""
    previous = final + ".previous"
    try:
        if os.path.exists(previous):
            shutil.rmtree(previous)
        if os.path.exists(final):
            os.replace(final, previous)
        os.replace(staging, final)
        shutil.rmtree(previous, ignore_errors=True)
    except OSError as error:
        raise user_error_from(error, final) from None


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def write_json(path: str, data, indent: int | None = 2, sort_keys: bool = False, **dump_kwargs) -> None:
    """Write ``data`` as JSON (with a final newline) through ``atomic_write``."""
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=indent, sort_keys=sort_keys, **dump_kwargs)
        handle.write("\n")


def write_numpy_checkpoint(path: str, config: dict, tensors: dict) -> None:
    """config.json and model.safetensors (numpy arrays, PyTorch's metadata) in `path`, each written whole:
    how the JAX and Keras ports save a checkpoint PyTorch loads."""
    from safetensors.numpy import save

    make_directory(path, "checkpoint directory")
    with atomic_write(os.path.join(path, "model.safetensors"), "wb") as handle:
        handle.write(save(tensors, metadata={"format": "pt"}))
    write_json(os.path.join(path, "config.json"), config, sort_keys=True)


def safetensors_problem(path: str) -> str | None:
    """None when a safetensors file is whole (its length matches its own header), else what is wrong."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            if header_length > size - 8:
                return "truncated header"
            header = json.loads(handle.read(header_length))
        data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
                       default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError):
        return "unreadable header"
    if size != 8 + header_length + data_end:
        return f"{size} bytes where its header describes {8 + header_length + data_end}"
    return None


def check_safetensors(path: str) -> None:
    """Refuse a damaged safetensors file in one line before anything tries to load it."""
    problem = safetensors_problem(path)
    if problem is not None:
        raise UserError(f"{path} is damaged ({problem}): re-save it, or use another checkpoint")
