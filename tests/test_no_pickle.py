"""Nothing we ship reads a pickle: loading one runs arbitrary code. Files we read are safetensors, JSON, YAML
through the safe loader, Parquet or raw arrays; transformers' own checkpoint state (optimizer, scheduler, RNG)
is read by transformers with `torch.load(weights_only=True)`."""

import re
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "moderngpt2"
FORBIDDEN = {
    "pickle": re.compile(r"\bimport\s+(c?pickle|dill|shelve|marshal)\b|\bfrom\s+(c?pickle|dill|shelve)\s+import"
                         r"|\b(c?pickle|dill)\.(load|Unpickler)"),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only=True)"),
    "yaml.load without the safe loader": re.compile(r"yaml\.(unsafe_)?load(_all)?\((?![^)]*SafeLoader)"),
    "numpy loads with pickles allowed": re.compile(r"allow_pickle\s*=\s*True"),
}


def test_no_source_file_reads_a_pickle():
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 20
    found = [f"{path.relative_to(SOURCE)}:{number}: {what}"
             for path in files for number, line in enumerate(path.read_text().splitlines(), 1)
             for what, pattern in FORBIDDEN.items() if pattern.search(line)]
    assert not found, found


def test_the_patterns_catch_what_they_are_for():
    samples = {"pickle": "import pickle", "torch.load without weights_only=True": "torch.load(path)",
               "yaml.load without the safe loader": "yaml.load(handle)",
               "numpy loads with pickles allowed": "np.load(p, allow_pickle=True)"}
    for what, sample in samples.items():
        assert FORBIDDEN[what].search(sample), what
    assert not FORBIDDEN["torch.load without weights_only=True"].search("torch.load(p, weights_only=True)")
    assert not FORBIDDEN["yaml.load without the safe loader"].search("yaml.safe_load(handle)")
