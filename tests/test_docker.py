"""The Dockerfile installs the package the Makefile installs (Docker cannot run here)."""

import fnmatch
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_dockerfile_installs_the_project_the_makefile_installs():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install --quiet -e \.\s*$", makefile, re.MULTILINE)  # make: this repo
    runs = [arg for op, arg in instructions() if op == "RUN"]
    assert any(re.search(r"\bpip install \.(\s|$)", run) for run in runs)
    copied = " ".join(arg for op, arg in instructions() if op == "COPY")
    for needed in ("pyproject.toml", "nst_core", "flows", "nst_cli", "prefect.yaml"):
        assert needed in copied
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "nst-batch"
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    # What setuptools' find does with these patterns: every package folder whose dotted name
    # matches one of them.
    every_package = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in ROOT.rglob("__init__.py")
        if ".venv" not in init.parts
    }
    packaged = {
        name
        for name in every_package
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in find["find"]["include"])
    }
    layers = {
        name for name in every_package if name.split(".")[0] in ("nst_core", "flows", "nst_cli")
    }
    assert packaged == layers  # every layer and subpackage; tools/, tests/, bench/ stay out
    assert {"nst_core.engine", "nst_core.batch", "nst_core.batch.storage"} <= packaged


def test_dockerfile_weights_check_imports_a_module_that_exists():
    run = next(arg for op, arg in instructions() if op == "RUN" and "caffe_state_dict" in arg)
    module = re.search(r"from ([\w.]+) import caffe_state_dict", run)[1]
    assert (ROOT / Path(*module.split("."))).with_suffix(".py").exists(), module


def test_base_image_torch_satisfies_the_declared_range():
    base = next(arg for op, arg in instructions() if op == "ARG" and arg.startswith("BASE_IMAGE"))
    version = re.search(r"pytorch:(\d+)\.(\d+)\.(\d+)-cuda", base)
    assert version, base
    major, minor = int(version[1]), int(version[2])
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_range = next(d for d in deps if d.startswith("torch>"))
    low = re.search(r">=(\d+)\.(\d+)", torch_range)
    high = re.search(r"<(\d+)", torch_range)
    assert (major, minor) >= (int(low[1]), int(low[2])) and major < int(high[1])


def test_default_command_is_a_worker_for_the_nst_gpu_pool():
    command = next(arg for op, arg in instructions() if op == "CMD")
    assert '"worker", "start", "--pool", "nst-gpu"' in command


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "outputs", ".prefect"} <= set(ignored)
