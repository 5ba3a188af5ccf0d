"""pyproject.toml's lower bounds are exactly what the lower-bound environment (requirements/lowest.txt) installs."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)(.*)$")


def normalised(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_lower_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the base, DeepSpeed and the test runner: what the lower-bound environment installs (other extras are optional)
    extras = project["optional-dependencies"]
    test_runner = [r for r in extras["dev"] if normalised(REQUIREMENT.match(r).group(1)) == "pytest"]
    requirements = project["dependencies"] + extras["deepspeed"] + test_runner
    bounds = {}
    for requirement in requirements:
        name, specifiers = REQUIREMENT.match(requirement.replace(" ", "")).groups()
        lower = [spec[2:] for spec in specifiers.split(",") if spec.startswith(">=")]
        upper = [spec for spec in specifiers.split(",") if spec.startswith("<")]
        assert len(lower) == 1 and len(upper) == 1, f"{requirement}: state a tested range, >=low,<high"
        bounds[normalised(name)] = lower[0]
    return bounds


def pinned_lowest():
    pins = {}
    for line in (ROOT / "requirements" / "lowest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[normalised(name)] = version.strip()
    return pins


def release(version):
    parts = [int(part) for part in version.split(".")]
    return parts + [0] * (3 - len(parts))


def test_every_lower_bound_is_the_version_the_lowest_environment_pins():
    bounds, pins = declared_lower_bounds(), pinned_lowest()
    assert set(bounds) == set(pins)
    for name, version in pins.items():
        assert release(bounds[name]) == release(version), f"{name}: pyproject says >={bounds[name]}, CI pins {version}"
