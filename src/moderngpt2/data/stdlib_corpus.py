"""A few megabytes of English text, made offline from the docstrings of Python's standard library.

Demos and experiments need real language data without a network. Every Python installation carries
thousands of carefully written docstrings; we collect them at run time (nothing is copied into the
repository). Pure-Python modules are read with ``ast`` so that no module is imported (importing ``this``
prints, ``antigravity`` opens a browser, ``tkinter`` may need a display); compiled modules such as
``math`` or ``builtins`` have their docstrings only at run time, so those few are imported. The pages of
``help()`` (the language reference shipped as ``pydoc_data.topics``) are added as documents too.

The result is deterministic for a given Python version: files are walked in sorted order, docstrings are
kept in definition order, duplicates are dropped, and the train/validation split is decided by a seeded
hash of each text, so a text can never land in both splits.
"""

import ast
import importlib
import inspect
import json
import os
import sys
import sysconfig
import warnings

from tqdm.auto import tqdm

from .encode import text_digest

MIN_CHARS = 60  # shorter docstrings ("Return self.") carry little language
MIN_WORDS = 8
# Test suites, demos and the IDE are code about code; third-party packages are not the standard library.
SKIPPED_DIRS = {"test", "tests", "idle_test", "idlelib", "turtledemo", "site-packages", "dist-packages",
                "__pycache__", "_bundled", "__phello__"}
SKIPPED_MODULES = {"this", "antigravity", "__hello__"}
# importing these may talk to the terminal (readline can emit escape sequences when it initialises)
SKIPPED_COMPILED = {"readline", "_curses", "_curses_panel"}


def _stdlib_python_files():
    """Sorted ``.py`` files of the standard library proper, as (dotted module name, path)."""
    root = sysconfig.get_paths()["stdlib"]
    top_level = set(sys.stdlib_module_names)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        parts = [] if rel == "." else rel.split(os.sep)
        if parts and parts[0] not in top_level:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("config-"))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            stem = name[:-3]
            dotted = parts + ([] if stem == "__init__" else [stem])
            if not parts and stem not in top_level:
                continue
            if not dotted or dotted[-1] in SKIPPED_MODULES or dotted[-1].startswith("test_"):
                continue
            found.append((".".join(dotted), os.path.join(dirpath, name)))
    return found


def _docstrings_from_source(path):
    """Docstrings of the module and every class and function in it, in definition order."""
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, ValueError, OSError):
        return []
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                docs.append(doc)
    return docs


def _compiled_module_names():
    """Standard-library modules that exist only in compiled form (no ``.py`` to parse).

    Private ones count too: ``_io`` holds the documentation of ``io.TextIOWrapper`` and friends. The
    interpreter's own test modules (``_testcapi``, ``_xxtestfuzz`` ...) are left out.
    """
    names = set(sys.builtin_module_names)
    dynload = os.path.join(sysconfig.get_paths()["platstdlib"], "lib-dynload")
    if os.path.isdir(dynload):
        names.update(f.split(".")[0] for f in os.listdir(dynload))
    return sorted(n for n in names if n in sys.stdlib_module_names and not n.startswith(("_test", "_xx"))
                  and "test" not in n and n not in SKIPPED_COMPILED)


def _docstrings_from_compiled(module_name):
    """Docstrings of a compiled module, its public classes and functions, and their methods."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except Exception:  # a module that cannot be imported here (missing system library) is simply skipped
        return []
    docs = [inspect.getdoc(module)]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("__") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        docs.append(inspect.getdoc(obj))
        if inspect.isclass(obj):
            for member_name, member in sorted(vars(obj).items()):
                if not member_name.startswith("__") and inspect.isroutine(member):
                    docs.append(inspect.getdoc(member))
    return [d for d in docs if d]


def _help_topics():
    """The language-reference pages that ``help()`` shows (``pydoc_data.topics``), one text per topic."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [inspect.cleandoc(topics[name]) for name in sorted(topics)]


def _is_prose(doc):
    return len(doc) >= MIN_CHARS and len(doc.split()) >= MIN_WORDS


def collect_docstrings(progress=True):
    """All distinct, long-enough docstrings of the standard library, in a deterministic order."""
    files = _stdlib_python_files()
    seen, texts = set(), []

    def keep(doc):
        doc = doc.strip()
        if _is_prose(doc) and doc not in seen:
            seen.add(doc)
            texts.append(doc)

    for _, path in tqdm(files, desc="stdlib docstrings", unit="file", disable=not progress):
        for doc in _docstrings_from_source(path):
            keep(doc)
    for name in _compiled_module_names():
        for doc in _docstrings_from_compiled(name):
            keep(doc)
    for doc in _help_topics():
        keep(doc)
    return texts


def hash_fraction(text, seed=0):
    """A number in [0, 1) fixed by the text and the seed: the basis of the never-overlapping split."""
    return text_digest(text, seed) / 2**64


def build_stdlib_corpus(out_dir, validation_fraction=0.05, seed=0, progress=True):
    """Write ``stdlib_train.jsonl`` and ``stdlib_validation.jsonl`` under ``out_dir``; return both paths.

    One JSON line ``{"text": ...}`` per docstring. A text goes to validation when its seeded hash fraction
    is below ``validation_fraction``.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    os.makedirs(out_dir, exist_ok=True)
    texts = collect_docstrings(progress=progress)
    paths = (os.path.join(out_dir, "stdlib_train.jsonl"), os.path.join(out_dir, "stdlib_validation.jsonl"))
    with open(paths[0] + ".tmp", "w", encoding="utf-8") as train, \
            open(paths[1] + ".tmp", "w", encoding="utf-8") as validation:
        for text in texts:
            target = validation if hash_fraction(text, seed) < validation_fraction else train
            target.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    for path in paths:
        os.replace(path + ".tmp", path)
    return paths

