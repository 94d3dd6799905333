"""The Dockerfile installs the package the Makefile installs, at the versions constraints.txt
pins, and runs its worker as the README says (Docker cannot run here: these tests read files)."""

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PINNED = ("prefect", "torch", "torchvision")
# The machines the pins are chosen for: the image's (and CI's) x86_64, and the aarch64 dev
# machine kind whose disk keeps older torch builds.
MACHINES = ("x86_64", "aarch64")


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def constraints() -> list[Requirement]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return [Requirement(line) for line in (ln.split("#")[0].strip() for ln in lines) if line]


def pins(machine: str) -> dict[str, Version]:
    """Package -> the one exact version constraints.txt gives it on `machine` (Linux)."""
    environment = default_environment() | {"platform_machine": machine, "sys_platform": "linux"}
    found: dict[str, list[Version]] = {}
    for requirement in constraints():
        if requirement.marker is None or requirement.marker.evaluate(environment):
            (specifier,) = requirement.specifier  # one exact version, nothing else
            assert specifier.operator == "==" and "*" not in specifier.version, requirement
            found.setdefault(requirement.name, []).append(Version(specifier.version))
    assert all(len(versions) == 1 for versions in found.values()), (machine, found)
    return {name: versions[0] for name, versions in found.items()}


def makefile_pip_installs() -> list[str]:
    """Every `pip install` of the Makefile's recipes, its $(VARIABLES) expanded."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=[ \t]*(.*)$", text, re.MULTILINE))

    def expand(line: str) -> str:
        for _ in range(5):  # variables within variables; unknown ones stay as written
            line = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], m[0]), line)
        return line

    recipes = [line for line in text.splitlines() if line.startswith("\t")]
    return [expand(line).strip() for line in recipes if "pip install" in line]


def test_constraints_pin_prefect_torch_and_torchvision_inside_the_declared_ranges():
    declared = {
        requirement.name: requirement.specifier
        for requirement in map(Requirement, project()["dependencies"])
    }
    for machine in MACHINES:
        pinned = pins(machine)
        assert set(pinned) == set(PINNED), machine
        for name, version in pinned.items():
            assert version in declared[name], (machine, name, version, declared[name])


def test_prefect_yaml_names_the_pinned_prefect():
    deployment = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert Version(str(deployment["prefect-version"])) == pins("x86_64")["prefect"]


def test_every_makefile_install_is_held_to_the_constraints():
    installs = [line for line in makefile_pip_installs() if "--upgrade pip" not in line]
    assert any(line.endswith(" torch torchvision") for line in installs)
    assert any(line.endswith(" -e .") for line in installs)  # make: this repo
    assert any(line.endswith(" -e '.[test]'") for line in installs)
    for line in installs:
        assert " -c constraints.txt " in line, line
    # A pin lives in constraints.txt only: none in the Makefile to drift from it.
    makefile = (ROOT / "Makefile").read_text()
    assert not re.search(rf"\b({'|'.join(PINNED)})\s*[=<>~!]=", makefile)
    # A changed pin re-runs the install (which then reinstalls torch: the project needs it).
    for stamp in (".installed", ".installed-test"):
        assert re.search(rf"^\$\(VENV\)/{re.escape(stamp)}:.*\bconstraints\.txt\b", makefile, re.M)


def test_every_dockerfile_install_is_held_to_the_constraints():
    ops = instructions()
    runs = [(index, arg) for index, (op, arg) in enumerate(ops) if op == "RUN"]
    installs = [(index, arg) for index, arg in runs if "pip install" in arg]
    assert installs
    for _, run in installs:
        assert re.search(r"\bpip install -c constraints\.txt\b", run), run
    copied = next(i for i, (op, arg) in enumerate(ops) if op == "COPY" and "constraints.txt" in arg)
    assert copied < installs[0][0]
    assert any(re.search(r"\btorch torchvision\s*$", run) for _, run in installs)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not re.search(rf"\b({'|'.join(PINNED)})\s*[=<>~!]=", dockerfile)


def test_base_image_brings_no_torch_of_its_own_and_a_supported_python():
    # A PyTorch or CUDA base image would bring a torch or CUDA that the pin does not choose.
    base = next(arg for op, arg in instructions() if op == "ARG" and arg.startswith("PYTHON_IMAGE"))
    version = re.fullmatch(r"PYTHON_IMAGE=python:(\d+\.\d+)-slim(-\w+)?", base)
    assert version, base
    assert Version(version[1]) in SpecifierSet(project()["requires-python"])
    froms = [arg for op, arg in instructions() if op == "FROM"]
    assert froms == ["${PYTHON_IMAGE}"]


def test_dockerfile_installs_the_project_the_makefile_installs():
    runs = [arg for op, arg in instructions() if op == "RUN"]
    assert any(re.search(r"\bpip install -c constraints\.txt \.(\s|$)", run) for run in runs)
    copied = " ".join(arg for op, arg in instructions() if op == "COPY")
    for needed in ("pyproject.toml", "nst_core", "flows", "nst_cli", "prefect.yaml"):
        assert needed in copied
    assert project()["name"] == "nst-batch"
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


def test_the_image_runs_as_an_unprivileged_user_with_a_home():
    ops = instructions()
    users = [(index, arg) for index, (op, arg) in enumerate(ops) if op == "USER"]
    assert users, "no USER: the worker and its flow runs would run as root"
    index, user = users[-1]
    uid = user.split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can check it; not root.
    assert uid.isdigit() and int(uid) != 0, user
    installs = [i for i, (op, arg) in enumerate(ops) if op == "RUN" and "pip install" in arg]
    assert index > max(installs)
    created = next(arg for op, arg in ops[:index] if op == "RUN" and "useradd" in arg)
    assert f"--uid {uid} " in created and "--create-home" in created
    home = re.search(r"--home-dir (\S+)", created)[1]
    environment = " ".join(arg for op, arg in ops if op == "ENV")
    assert re.search(rf"\bHOME={re.escape(home)}(\s|$)", environment)
    assert ops[-1][0] == "CMD" and index < len(ops) - 1


def test_dockerfile_weights_check_imports_a_module_that_exists():
    run = next(arg for op, arg in instructions() if op == "RUN" and "caffe_state_dict" in arg)
    module = re.search(r"from ([\w.]+) import caffe_state_dict", run)[1]
    assert (ROOT / Path(*module.split("."))).with_suffix(".py").exists(), module


def test_default_command_is_a_one_run_worker_for_the_gpu_pool():
    command = json.loads(next(arg for op, arg in instructions() if op == "CMD"))
    assert command[:3] == ["prefect", "worker", "start"]
    options = dict(zip(command[3::2], command[4::2], strict=True))
    # One flow run per GPU host, as the README's process workers: a run's units take every GPU.
    assert options["--limit"] == "1"
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    batch_pools = {
        deployment["work_pool"]["name"]
        for deployment in deployments
        if deployment["entrypoint"] == "flows/batch.py:stylize_batch"
    }
    assert options["--pool"] == "nst-gpu" and options["--pool"] in batch_pools


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "outputs", ".prefect"} <= set(ignored)
    assert "constraints.txt" not in ignored
