"""The Dockerfile (how users build the image) and hack/image (how tests build it without a
container daemon) must describe the same image: entrypoint, command, user, working directory,
environment, Python minor version, and the files that go into the wheel and where they land."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def final_and_build_stage(text: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(instruction, argument) pairs of the last stage and of the stage it copies from."""
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    stages: list[list[tuple[str, str]]] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    final = stages[-1]
    source = next(arg.split()[0].removeprefix("--from=") for ins, arg in final if ins == "COPY" and "--from=" in arg)
    build = next(s for s in stages if s[0][1].split()[-1] == source)
    return final, build


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, arg in stage:
        if ins == "ENV":
            for pair in shlex.split(arg):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def spec() -> dict[str, object]:
    out = subprocess.run([str(ROOT / "hack" / "image"), "spec"], capture_output=True, text=True, check=True, timeout=30)
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    return final_and_build_stage((ROOT / "Dockerfile").read_text())


def test_entrypoint_command_user_and_workdir_agree(spec: dict[str, object], dockerfile: tuple) -> None:  # type: ignore[type-arg]
    final, _ = dockerfile
    instructions = dict(final)
    config = spec["config"]
    assert isinstance(config, dict)
    assert json.loads(instructions["ENTRYPOINT"]) == config["Entrypoint"]
    assert json.loads(instructions["CMD"]) == config["Cmd"]
    assert instructions["USER"] == config["User"] == "65532:65532"
    # No WORKDIR in the final stage: the base image's, which is "/" for python:*-slim.
    assert instructions.get("WORKDIR", "/") == config["WorkingDir"]


def test_environment_agrees(spec: dict[str, object], dockerfile: tuple) -> None:  # type: ignore[type-arg]
    final, _ = dockerfile
    config = spec["config"]
    assert isinstance(config, dict)
    assert env_of(final) == config["Env"]
    image_env = dict(e.split("=", 1) for e in spec["image_config"]["Env"])  # type: ignore[index]
    assert env_of(final).items() <= image_env.items()
    # Read-only root: Python must not try to write bytecode, HOME is the writable /tmp.
    assert image_env["PYTHONDONTWRITEBYTECODE"] == "1" and image_env["HOME"] == "/tmp"


def test_same_files_installed_to_the_same_place(spec: dict[str, object], dockerfile: tuple) -> None:  # type: ignore[type-arg]
    final, build = dockerfile
    copied = [arg.split() for ins, arg in build if ins == "COPY" and "--from=" not in arg]
    sources = sorted(src.rstrip("/") for args in copied for src in args[:-1])
    assert sources == sorted(spec["sources"])  # type: ignore[arg-type]
    install = next(arg for ins, arg in build if ins == "RUN" and "pip install" in arg)
    prefix = re.search(r"--prefix=(\S+)", install)
    assert prefix is not None, install
    copy_back = next(arg.split() for ins, arg in final if ins == "COPY" and "--from=" in arg)
    assert copy_back[1] == prefix.group(1) and copy_back[2] == spec["prefix"]


def test_python_minor_version_agrees(spec: dict[str, object], dockerfile: tuple) -> None:  # type: ignore[type-arg]
    final, _ = dockerfile
    base = final[0][1].split()[0]
    match = re.match(r"python:(\d+\.\d+)", base)
    assert match, f"the Dockerfile's final stage is not based on python:X.Y: {base}"
    assert match.group(1) == spec["python"]
