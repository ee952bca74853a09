"""The retraining pipeline (ci/retrain.gitlab-ci.yml + ci/scripts) run for real by gitlab-ci-local.

A throwaway git repository includes the template the way a model repository does (local include with
inputs). Its jobs run in the shell, with recording stubs of aws, kubectl and buildctl-daemonless.sh first
on PATH; everything else (sh, curl, envsubst, jq) is real. The callbacks go to a real controller process
that holds a real run, created by an Alertmanager notification and started by its `command` runner.

gitlab-ci-local (4.75) does not implement id_tokens or resource_group, and it evaluates workflow:rules only
for their variables (a pipeline that matches no rule still runs). So:
- the ID token is passed as the variable AWS_ID_TOKEN, as GitLab would inject it, and the template's
  id_tokens/resource_group/workflow are checked as structure (test_template_structure, and through
  gitlab-ci-local's --preview, which also validates against GitLab's JSON schema);
- the same start condition sits on every job as rules:, which gitlab-ci-local does evaluate: a push pipeline
  runs no job (test_push_pipeline_runs_no_job), and the pipelines here run with CI_PIPELINE_SOURCE=api,
  what GitLab sets for a pipeline the controller creates through the API.

Tools: `sh tests/infra/install-ci-tools.sh` (RETRAIN_CI_TOOLS overrides its cache dir). A missing tool skips
these tests, or fails them with REQUIRE_INTEGRATION=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from controller.core.callbacks import callback_token
from tests.infra.procs import Deadline, controller_service, free_port, get_json, kill_process_groups, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "ci" / "retrain.gitlab-ci.yml"
SCRIPTS = ROOT / "ci" / "scripts"
JOB_TEMPLATE = ROOT / "k8s" / "training-job.yaml"
NOTIFICATION = ROOT / "tests" / "data" / "notification.json"
TOOLS = Path(os.environ.get("RETRAIN_CI_TOOLS") or Path.home() / ".cache" / "retrain-controller")
NODE = TOOLS / "node22" / "node_modules" / ".bin" / "node"
GCL = TOOLS / "gitlab-ci-local" / "node_modules" / "gitlab-ci-local" / "dist" / "index.js"
HINT = "run `sh tests/infra/install-ci-tools.sh`"

AM_TOKEN = "am-ci-token-51c0e9d2"
CALLBACK_SECRET = "callback-secret-ci-7d2e4f"
ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJzdHMuYW1hem9uYXdzLmNvbSJ9.c2lnbmF0dXJl"  # what id_tokens would inject
ACCOUNT = "123456789012"
REGION = "eu-west-1"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/recsys-retrain"
DIGEST = "sha256:" + "5e1f" * 16
INPUTS = {
    "model": "recsys",
    "aws_region": REGION,
    "aws_role_arn": ROLE,
    "data_bucket": "ml-recsys-data",
    "eks_cluster": "ml-training-eks",
    "namespace": "ml-train",
    "training_image": f"{REGISTRY}/recsys-train:1.4.0",
    "ecr_registry": REGISTRY,
    "ecr_repository": "recsys-serving",
    "tools_image": "example.org/retrain-tools:1",
    "build_image": "example.org/buildkit-aws:rootless",
    "window_days": 3,
}
STAGES = ["fetch-data", "train", "evaluate", "build", "report"]
# What the controller sends to every pipeline.
PIPELINE_VARIABLES = ("RETRAIN_RUN_ID", "RETRAIN_MODEL", "RETRAIN_REASONS", "RETRAIN_ALERTS", "RETRAIN_CALLBACK_URL",
                      "RETRAIN_CALLBACK_TOKEN")  # fmt: skip
PIPELINE_TIMEOUT_S = 180.0


# ---- tools ----------------------------------------------------------------------------------------------------


def _missing(what: str) -> None:
    message = f"{what} not found ({HINT})"
    if os.environ.get("REQUIRE_INTEGRATION", "") not in ("", "0"):
        pytest.fail(message + "; REQUIRE_INTEGRATION is set", pytrace=False)
    pytest.skip(message)


def _which(*names: str) -> dict[str, str]:
    found = {}
    for name in names:
        path = shutil.which(name)
        if path is None:
            _missing(name)
        found[name] = str(path)
    return found


def _gitlab_ci_local() -> list[str]:
    if not os.access(NODE, os.X_OK):
        _missing(f"Node 22 at {NODE}")
    if not GCL.is_file():
        _missing(f"gitlab-ci-local at {GCL}")
    _which("git", "rsync", "curl", "jq", "envsubst", "sh")
    return [str(NODE), str(GCL)]


def _run(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run to completion in its own process group; on timeout the whole group is killed and the test fails."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{argv[:3]} did not finish within {timeout:.0f}s\n{out[-6000:]}", pytrace=False)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (a job's background process)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


# ---- stubs ----------------------------------------------------------------------------------------------------

# One program, installed as aws, kubectl and buildctl-daemonless.sh. Each call appends a JSON line to
# $STUB_DIR/calls.jsonl (argv, stdin of `kubectl apply -f -`, the credentials it was given) and answers like
# the real tool would. $STUB_DIR/scenario.json says what the fake world looks like.
STUB = r'''
import base64, json, os, re, sys
from pathlib import Path

stub_dir = Path(os.environ["STUB_DIR"])
scenario = json.loads((stub_dir / "scenario.json").read_text())
tool, args = Path(sys.argv[0]).name, sys.argv[1:]
entry = {"tool": tool, "argv": args, "job": os.environ.get("CI_JOB_NAME", "")}

def record(**more):
    entry.update(more)
    with open(stub_dir / "calls.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")

def opt(name):
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None

def bump(name):
    path = stub_dir / name
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n

if tool == "aws":
    token_file = os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE", "")
    token = Path(token_file).read_text() if token_file and Path(token_file).is_file() else None
    record(role_arn=os.environ.get("AWS_ROLE_ARN"), web_identity_token=token, region=os.environ.get("AWS_REGION"),
           static_keys=bool(os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_SECRET_ACCESS_KEY")))
    if token is None:  # what the real CLI says when it has no credentials at all
        sys.exit("Unable to locate credentials. You can configure credentials by running \"aws configure\".")
    cmd = args[:2]
    if cmd == ["sts", "get-caller-identity"]:
        print(f"arn:aws:sts::123456789012:assumed-role/{os.environ['AWS_ROLE_ARN'].rsplit('/', 1)[1]}/session")
    elif cmd == ["s3", "sync"]:
        if not args[3].startswith("s3://"):  # to a local directory: the trained model
            Path(args[3]).mkdir(parents=True, exist_ok=True)
            (Path(args[3]) / "model.bin").write_bytes(b"weights")
    elif cmd == ["s3", "ls"]:
        for i in range(scenario["days_present"]):
            print(f"                           PRE dt=2026-11-2{i}/")
    elif cmd == ["s3", "cp"]:
        name = args[2].rsplit("/", 1)[1].removesuffix(".json")
        Path(args[3]).write_text(json.dumps(scenario[name]))
    elif cmd == ["eks", "update-kubeconfig"]:
        Path(opt("--kubeconfig")).write_text("apiVersion: v1\nkind: Config\n")
        print(f"Added new context arn:aws:eks:{opt('--region')}:123456789012:cluster/{opt('--name')}")
    elif cmd == ["ecr", "get-login-password"]:
        print("ecr-password-from-stub")
    else:
        sys.exit(f"aws stub: unexpected {args}")

elif tool == "kubectl":
    kubeconfig = os.environ.get("KUBECONFIG", "")
    if args[:2] == ["apply", "-f"] and args[2] == "-":
        manifest = sys.stdin.read()
        record(stdin=manifest, kubeconfig_exists=Path(kubeconfig).is_file())
        print(f"job.batch/{re.search(r'^  name: (.+)$', manifest, re.M).group(1)} created")
    elif args[:2] == ["get", "job"]:
        n = bump("polls")
        record(poll=n)
        if n > scenario["polls_before_done"]:
            kind = scenario["job_outcome"]
            reason, message = {"Complete": ("CompletionsReached", "Reached expected number of succeeded pods"),
                               "Failed": ("BackoffLimitExceeded", "Job has reached the specified backoff limit")}[kind]
            first = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
            print(f"{first}|{reason}|{message}\n{kind}|{reason}|{message}")
    elif args[:2] == ["logs", "--follow"]:
        record()
        print("epoch 1/2 loss=0.412\nepoch 2/2 loss=0.377")
    else:
        record()
        sys.exit(f"kubectl stub: unexpected {args}")

elif tool == "buildctl-daemonless.sh":
    config = json.loads((Path(os.environ["DOCKER_CONFIG"]) / "config.json").read_text())
    auths = {host: base64.b64decode(v["auth"]).decode().split(":", 1)[0] for host, v in config["auths"].items()}
    locals_ = dict(a.split("=", 1) for a in [args[i + 1] for i, a in enumerate(args) if a == "--local"])
    record(registry_users=auths, model_files=sorted(os.listdir(locals_["model"])))
    name = re.search(r"name=([^,]+)", opt("--output")).group(1)
    Path(opt("--metadata-file")).write_text(json.dumps({
        "buildx.build.ref": "builder/builder0/abc",
        "containerimage.config.digest": "sha256:" + "c0" * 32,
        "containerimage.descriptor": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                      "digest": scenario["digest"], "size": 1234},
        "containerimage.digest": scenario["digest"],
        "image.name": name,
    }, indent=2))
    print(f"#12 pushing manifest for {name}@{scenario['digest']} done")
'''


@dataclass
class Stubs:
    dir: Path
    bin: Path

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        path = self.dir / "calls.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [c for c in map(json.loads, lines) if tool is None or c["tool"] == tool]

    def scenario(self, **changes: Any) -> None:
        data = {
            "days_present": 3,
            "polls_before_done": 1,
            "job_outcome": "Complete",
            "candidate": {"precision_at_k": 0.312, "recall_at_k": 0.41, "note": "not a number"},
            "production": {"precision_at_k": 0.305},
            "digest": DIGEST,
        }
        (self.dir / "scenario.json").write_text(json.dumps({**data, **changes}))


@pytest.fixture
def stubs(tmp_path: Path) -> Stubs:
    s = Stubs(tmp_path / "stubs", tmp_path / "stubs" / "bin")
    s.bin.mkdir(parents=True)
    program = s.dir / "stub.py"
    program.write_text(f"#!{sys.executable}\n" + STUB)
    program.chmod(0o755)
    for name in ("aws", "kubectl", "buildctl-daemonless.sh"):
        (s.bin / name).symlink_to(program)
    s.scenario()
    return s


# ---- the model repository -------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.org",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.org"}  # fmt: skip
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=30, env=env)


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """A model repository as its team would have it: ci/ and the Job template copied in, a Dockerfile, and a
    .gitlab-ci.yml that includes the template with inputs. gitlab-ci-local wants a commit and a remote."""
    _gitlab_ci_local()  # here, so a missing tool stops a test before its controller and run are made
    repo = tmp_path / "recsys-model"
    shutil.copytree(SCRIPTS, repo / "ci" / "scripts")
    shutil.copy(TEMPLATE, repo / "ci" / TEMPLATE.name)
    (repo / "k8s").mkdir()
    shutil.copy(JOB_TEMPLATE, repo / "k8s" / JOB_TEMPLATE.name)
    (repo / "Dockerfile").write_text("FROM python:3.12-slim\nCOPY --from=model . /opt/model/\n")
    (repo / ".gitlab-ci.yml").write_text(
        yaml.safe_dump({"include": [{"local": "ci/retrain.gitlab-ci.yml", "inputs": INPUTS}]}, sort_keys=False)
    )
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "ci")
    _git(repo, "config", "user.email", "ci@example.org")
    _git(repo, "remote", "add", "origin", "git@gitlab.example.org:ml/recsys-model.git")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "retraining pipeline")
    _git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    _git(repo, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")
    return repo


def gitlab_ci_local(repo: Path, stubs: Stubs, *args: str, variables: dict[str, str] | None = None) -> str:
    """Run gitlab-ci-local in `repo` with the shell executor. Returns its output, the exit code in the last line
    as `exit=N`. Not with --shell-isolation: 4.75 re-syncs the job's copy of the checkout with --delete before
    after_script, so whatever the script wrote is gone before the artifacts are collected. The jobs share the
    checkout instead, and the test checks what each job exported as artifacts."""
    gcl = _gitlab_ci_local()
    argv = [*gcl, "--home", str(repo.parent / "gcl-home"), "--force-shell-executor", "--no-color", *args]
    for key, value in (variables or {}).items():
        argv += ["--variable", f"{key}={value}"]
    if "CI_PIPELINE_SOURCE" in (variables or {}):
        argv += ["--ignore-predefined-vars", "CI_PIPELINE_SOURCE"]  # on purpose: see the module's docstring
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RETRAIN_", "CI_", "GCL_"))}
    env.update({"PATH": f"{stubs.bin}:{env.get('PATH', '/usr/bin:/bin')}", "STUB_DIR": str(stubs.dir),
                "NO_COLOR": "1", "HOME": str(repo.parent / "gcl-home")})  # fmt: skip
    (repo.parent / "gcl-home").mkdir(exist_ok=True)
    result = _run(argv, PIPELINE_TIMEOUT_S, cwd=repo, env=env)
    return f"{result.stdout}\nexit={result.returncode}"


def _exit_code(output: str) -> int:
    return int(output.rsplit("exit=", 1)[1])


def _started(output: str) -> list[str]:
    """The jobs gitlab-ci-local started, in order."""
    return re.findall(r"^(retrain:[a-z-]+) +starting shell", output, re.M)


# ---- the controller -------------------------------------------------------------------------------------------


@dataclass
class ControllerProcess:
    url: str
    store: Path
    service: Any

    def post(self, path: str, body: Any, token: str) -> Any:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST", headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(get_json(f"{self.url}/api/v1/runs/{run_id}"))

    def pipeline_request(self, run_id: str) -> dict[str, str]:
        """The RETRAIN_* environment the command runner recorded for this run's pipeline."""
        return dict(json.loads((self.store.parent / "pipelines" / run_id / "request.json").read_text()))


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProcess]:
    """The real controller; model recsys runs `sleep` as its pipeline (a stand-in for the GitLab pipeline that
    gitlab-ci-local then plays), so the run sits in `training` until the callbacks move it."""
    port = free_port()
    store = tmp_path / "store" / "controller.db"
    config = {
        "server": {"host": "127.0.0.1", "port": port, "log_format": "json"},
        "store": {"path": str(store)},
        "policy": {"cooldown": "1h", "daily_budget": 3, "max_concurrent_runs": 1, "tick_interval": "200ms"},
        "models": [{
            "name": "recsys",
            "matchers": ['model="recsys"'],
            "rules": [{"alertname": "RecsysPrecisionAtKDrop", "reason": "precision_drop"},
                      {"alertname": "RecsysFeatureDrift", "reason": "drift"}],
            "pipeline": {"runner": "command", "command": ["sleep", "600"]},
        }],
    }  # fmt: skip
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    service = controller_service(tmp_path / "controller", path, port, AM_TOKEN,
                                 {"RETRAIN_CONTROLLER_CALLBACK_SECRET": CALLBACK_SECRET})  # fmt: skip
    service.start()
    try:
        yield ControllerProcess(service.url, store, service)
    finally:
        service.stop()
        kill_process_groups(sorted((store.parent / "pipelines").glob("*/pid")))


def _start_run(ctl: ControllerProcess, deadline: Deadline) -> tuple[str, dict[str, str]]:
    """Alertmanager's notification makes a run; the command runner starts it. Returns the run id and the
    variables its pipeline got."""
    answer = ctl.post("/api/v1/alerts", json.loads(NOTIFICATION.read_text()), AM_TOKEN)
    run_id = next(a["run_id"] for a in answer["alerts"] if a["decision"] == "accepted")
    wait_until(lambda: ctl.run(run_id)["run"]["phase"] == "training", f"run {run_id} training", deadline,
               ctl.service.describe)  # fmt: skip
    variables = ctl.pipeline_request(run_id)
    # The token reaches the pipeline's environment but is never written to disk; it is HMAC(secret, run id).
    assert "RETRAIN_CALLBACK_TOKEN" not in variables
    variables["RETRAIN_CALLBACK_TOKEN"] = callback_token(CALLBACK_SECRET, run_id)
    assert variables["RETRAIN_CALLBACK_URL"] == f"{ctl.url}/api/v1/runs/{run_id}/events"
    return run_id, variables


def _pipeline_variables(variables: dict[str, str]) -> dict[str, str]:
    return {
        **{k: variables[k] for k in PIPELINE_VARIABLES},
        "CI_PIPELINE_SOURCE": "api",  # what GitLab sets for a pipeline created through the API
        "AWS_ID_TOKEN": ID_TOKEN,  # what id_tokens: AWS_ID_TOKEN would inject
        "RETRAIN_POLL_SECONDS": "1",
    }


# ---- tests ----------------------------------------------------------------------------------------------------


def test_scripts_pass_shellcheck() -> None:
    shellcheck = _which("shellcheck")["shellcheck"]
    scripts = sorted(str(p.relative_to(ROOT)) for p in SCRIPTS.glob("*.sh"))
    assert len(scripts) >= 9, scripts
    result = _run([shellcheck, "--external-sources", *scripts], 60, cwd=ROOT)
    assert result.returncode == 0, result.stdout


def test_template_structure() -> None:
    """What gitlab-ci-local cannot run is checked as structure: OIDC id_tokens, resource_group, workflow."""
    header, body = list(yaml.safe_load_all(TEMPLATE.read_text()))
    inputs = header["spec"]["inputs"]
    required = {name for name, spec in inputs.items() if "default" not in spec}
    assert required == {"model", "aws_region", "aws_role_arn", "data_bucket", "eks_cluster", "training_image",
                        "ecr_registry", "ecr_repository", "tools_image", "build_image"}  # fmt: skip
    assert inputs["eval_margin"] == {**inputs["eval_margin"], "type": "number", "default": 0.02}

    condition = '($CI_PIPELINE_SOURCE == "api" || $CI_PIPELINE_SOURCE == "trigger") && $RETRAIN_RUN_ID'
    assert body["workflow"]["rules"] == [{"if": condition}]
    assert body["stages"] == STAGES
    base = body[".retrain-job"]
    assert base["rules"] == [{"if": condition}]
    assert base["resource_group"] == "retrain-$[[ inputs.model ]]"
    assert base["id_tokens"] == {"AWS_ID_TOKEN": {"aud": "sts.amazonaws.com"}}
    assert base["after_script"] == ['sh "$RETRAIN_SCRIPTS/stage.sh" end']
    assert base["artifacts"]["when"] == "always"
    jobs = {name: job for name, job in body.items() if name.startswith("retrain:")}
    assert [job["stage"] for job in jobs.values()] == STAGES
    assert all(job["extends"] == ".retrain-job" for job in jobs.values())
    assert "--oci-worker-no-process-sandbox" in body["retrain:build"]["variables"]["BUILDKITD_FLAGS"]
    template, scripts = TEMPLATE.read_text(), "".join(p.read_text() for p in SCRIPTS.glob("*.sh"))
    assert "kaniko" not in (template + scripts).lower()
    assert "AWS_ACCESS_KEY_ID" not in template and "AWS_SECRET_ACCESS_KEY" not in template  # OIDC only
    assert "set -x" not in scripts  # it would print the callback token


def test_preview_resolves_the_include_and_inputs(model_repo: Path, stubs: Stubs) -> None:
    """gitlab-ci-local parses the user's file, includes the template with its inputs and validates the result
    against GitLab's CI JSON schema."""
    out = gitlab_ci_local(model_repo, stubs, "--preview")
    assert _exit_code(out) == 0, out
    assert "json schema validated" in out, out
    merged = yaml.safe_load(out[out.index("---\n"):].rsplit("\nexit=", 1)[0])
    train = merged["retrain:train"]
    assert train["resource_group"] == "retrain-recsys"
    assert train["id_tokens"] == {"AWS_ID_TOKEN": {"aud": "sts.amazonaws.com"}}
    assert train["image"]["name"] == INPUTS["tools_image"]
    assert merged["retrain:build"]["image"] == {"name": INPUTS["build_image"], "entrypoint": [""]}
    assert train["variables"]["TRAINING_NAMESPACE"] == "ml-train"
    assert train["variables"]["TRAINING_DEADLINE_MINUTES"] in (360, "360")  # the input's default
    assert merged["retrain:fetch-data"]["variables"]["WINDOW_DAYS"] in (3, "3")


def test_push_pipeline_runs_no_job(model_repo: Path, stubs: Stubs) -> None:
    """gitlab-ci-local's own pipeline source is `push`; the rules keep every retraining job out of it, and out
    of an API pipeline that carries no run id."""
    for variables in ({}, {"CI_PIPELINE_SOURCE": "api"}):
        out = gitlab_ci_local(model_repo, stubs, variables=variables)
        assert _exit_code(out) == 0 and "pipeline finished" in out, out
        assert _started(out) == [], out
    assert stubs.calls() == []


def test_pipeline_reports_image_to_the_controller(model_repo: Path, stubs: Stubs, controller: ControllerProcess) -> None:
    deadline = Deadline(PIPELINE_TIMEOUT_S + 60)
    run_id, variables = _start_run(controller, deadline)

    out = gitlab_ci_local(model_repo, stubs, variables=_pipeline_variables(variables))
    assert _exit_code(out) == 0, out
    assert _started(out) == [f"retrain:{stage}" for stage in STAGES], out
    token = variables["RETRAIN_CALLBACK_TOKEN"]
    assert token not in out and token not in json.dumps(stubs.calls()), "the callback token leaked"

    # AWS: every call went through the role with the job's ID token; no static keys anywhere.
    aws = stubs.calls("aws")
    assert aws and all(c["role_arn"] == ROLE and c["web_identity_token"] == ID_TOKEN for c in aws), aws
    assert not any(c["static_keys"] for c in aws)
    assert {c["job"] for c in aws if c["argv"][:2] == ["sts", "get-caller-identity"]} == {
        "retrain:fetch-data", "retrain:train", "retrain:evaluate", "retrain:build"}  # fmt: skip

    # fetch-data: the window, snapshotted under the run's prefix.
    run_prefix = f"s3://ml-recsys-data/retrain-runs/recsys/{run_id}"
    syncs = [c["argv"][2:4] for c in aws if c["argv"][:2] == ["s3", "sync"] and c["job"] == "retrain:fetch-data"]
    assert len(syncs) == 3 and all(dst == f"{run_prefix}/data/{src.rsplit('/', 2)[1]}/" for src, dst in syncs), syncs
    assert all(src.startswith("s3://ml-recsys-data/events/dt=") for src, _ in syncs)

    # train: the cluster from the inputs, the manifest rendered with this run's values and nothing left over.
    eks = next(c["argv"] for c in aws if c["argv"][:2] == ["eks", "update-kubeconfig"])
    assert eks[eks.index("--name") + 1] == "ml-training-eks" and eks[eks.index("--region") + 1] == REGION
    applies = [c for c in stubs.calls("kubectl") if c["argv"][:1] == ["apply"]]
    assert len(applies) == 1 and applies[0]["kubeconfig_exists"]
    manifest_text = applies[0]["stdin"]
    assert "${" not in manifest_text, manifest_text
    job = yaml.safe_load(manifest_text)
    job_name = f"retrain-recsys-{run_id}"
    assert job["metadata"]["name"] == job_name and job["metadata"]["namespace"] == "ml-train"
    assert job["metadata"]["labels"]["retrain/run-id"] == run_id
    assert job["spec"]["template"]["metadata"]["labels"]["retrain/model"] == "recsys"
    assert job["spec"]["activeDeadlineSeconds"] == 360 * 60 and job["spec"]["backoffLimit"] == 2
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == INPUTS["training_image"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RETRAIN_RUN_ID"] == run_id and env["RETRAIN_REASONS"] == variables["RETRAIN_REASONS"]
    assert env["RETRAIN_DATA_URI"] == f"{run_prefix}/data/"
    assert env["RETRAIN_MODEL_DIR"] == "$(RETRAIN_OUTPUT_URI)model/"  # Kubernetes' own syntax, untouched
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    polls = [c for c in stubs.calls("kubectl") if c["argv"][:2] == ["get", "job"]]
    assert len(polls) == 2 and polls[0]["argv"][2] == job_name, polls
    assert "epoch 2/2 loss=0.377" in out  # the Job's logs stream into the job log

    # build: pushed to the ECR repository, logged in to that registry, the trained model in the context.
    (build,) = stubs.calls("buildctl-daemonless.sh")
    assert build["argv"][0] == "build"
    assert f"type=image,name={REGISTRY}/recsys-serving:run-{run_id},push=true" in build["argv"]
    assert build["registry_users"] == {REGISTRY: "AWS"} and build["model_files"] == ["model.bin"]

    # The controller took the image by digest: the run moved from training to deploying because of it (and
    # on, since this controller has no canary for recsys). Every stage was reported.
    image = f"{REGISTRY}/recsys-serving@{DIGEST}"
    detail = controller.run(run_id)
    run = detail["run"]
    moves = [(h["from"], h["to"], h["cause"]) for h in detail["history"]]
    assert ("training", "deploying", f"pipeline reported image {image}") in moves, moves
    assert run["image"] == image
    assert run["offline_metrics"] == {"precision_at_k": 0.312, "recall_at_k": 0.41,
                                      "production_precision_at_k": 0.305}  # fmt: skip
    stages = [(s["stage"], s["status"]) for s in run["pipeline"]["stages"]]
    expected = [(stage, status) for stage in STAGES for status in ("running", "success")]
    if stages == expected[:-1]:  # the run ended before report's after_script: told, logged, not an error
        assert "callback stage report success: the run is already finished" in out, out
    else:
        assert stages == expected, stages

    # Each job exported its results as artifacts (what the next stages read).
    artifacts = model_repo / ".gitlab-ci-local" / "artifacts"
    data = json.loads((artifacts / "retrainOgfetch-data" / "retrain-out" / "data.json").read_text())
    assert data["data_uri"] == f"{run_prefix}/data/" and data["days_present"] == 3
    assert (artifacts / "retrainOgtrain" / "retrain-out" / "training-job.yaml").read_text() == manifest_text
    evaluation = json.loads((artifacts / "retrainOgevaluate" / "retrain-out" / "evaluation.json").read_text())
    assert evaluation["passed"] is True and evaluation["threshold"] == pytest.approx(0.305 * 0.98)
    assert (artifacts / "retrainOgbuild" / "retrain-out" / "image").read_text().strip() == image


def test_failed_training_job_fails_the_run(model_repo: Path, stubs: Stubs, controller: ControllerProcess) -> None:
    stubs.scenario(job_outcome="Failed", polls_before_done=0)
    deadline = Deadline(PIPELINE_TIMEOUT_S + 60)
    run_id, variables = _start_run(controller, deadline)

    out = gitlab_ci_local(model_repo, stubs, variables=_pipeline_variables(variables))
    assert _exit_code(out) != 0, out

    detail = controller.run(run_id)
    run = detail["run"]
    assert run["phase"] == "failed", detail
    assert "BackoffLimitExceeded" in run["cause"] and f"retrain-recsys-{run_id}" in run["cause"], run
    stages = [(s["stage"], s["status"]) for s in run["pipeline"]["stages"]]
    assert stages == [("fetch-data", "running"), ("fetch-data", "success"), ("train", "running"),
                      ("train", "failed")], stages  # fmt: skip
    assert run["image"] is None
    # Nothing after train ran.
    assert stubs.calls("buildctl-daemonless.sh") == []
    assert not [c for c in stubs.calls("aws") if c["job"] in ("retrain:evaluate", "retrain:build")]
    assert _started(out) == ["retrain:fetch-data", "retrain:train"], out


# ---- scripts on their own -------------------------------------------------------------------------------------


class CallbackStub:
    """Answers callbacks from a list of (status, body); records what it was sent."""

    def __init__(self, answers: list[tuple[int, dict[str, Any]]]):
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests.append({"auth": self.headers.get("Authorization"), "body": json.loads(body)})
                status, answer = fake.answers.pop(0) if len(fake.answers) > 1 else fake.answers[0]
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/runs/r1/events"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


OK = (200, {"run_id": "r1", "phase": "training", "effect": "record"})


@pytest.mark.parametrize(
    ("answers", "exit_code", "requests"),
    [
        ([OK], 0, 1),
        ([(503, {"error": "could not record the event"}), OK], 0, 2),  # transient: retried
        ([(409, {"error": "conflict", "detail": "run already has image"})], 0, 1),  # logged, not retried
        ([(403, {"error": "run is finished", "detail": "run r1 is failed"})], 0, 1),
        ([(403, {"error": "forbidden", "detail": "this token is not valid for this run"})], 1, 1),
        ([(401, {"error": "unauthorized"})], 1, 1),  # a bug: loud
        ([(400, {"error": "invalid event", "detail": []})], 1, 1),
    ],
    ids=["200", "503-then-200", "409", "403-finished", "403-token", "401", "400"],
)
def test_callback_statuses(tmp_path: Path, answers: list[tuple[int, dict[str, Any]]], exit_code: int,
                           requests: int) -> None:  # fmt: skip
    _which("curl", "sh")
    fake = CallbackStub(answers)
    token = "tok-" + "ab" * 30
    try:
        env = {"PATH": os.environ["PATH"], "RETRAIN_CALLBACK_URL": fake.url, "RETRAIN_CALLBACK_TOKEN": token,
               "RETRAIN_OUT": str(tmp_path / "out")}  # fmt: skip
        detail = 'job "train" \\ done\n\tnext'
        result = _run(["sh", str(SCRIPTS / "callback.sh"), "stage", "train", "success", detail], 60, env=env)
    finally:
        fake.close()
    assert result.returncode == exit_code, result.stdout
    assert len(fake.requests) == requests, fake.requests
    assert token not in result.stdout
    assert fake.requests[0]["auth"] == f"Bearer {token}"
    assert fake.requests[0]["body"] == {"event": "stage", "stage": "train", "status": "success",
                                        "detail": 'job "train" \\ done  next'}  # fmt: skip


@pytest.mark.parametrize(
    ("candidate", "production", "passed"),
    [
        (0.295, 0.30, True),  # 1.7% worse: inside the 2% margin
        (0.29, 0.30, False),  # 3.3% worse
        (0.25, None, True),  # nothing in production yet
    ],
)
def test_evaluation_gate(tmp_path: Path, stubs: Stubs, candidate: float, production: float | None,
                         passed: bool) -> None:  # fmt: skip
    _which("jq", "sh")
    stubs.scenario(candidate={"precision_at_k": candidate},
                   production={} if production is None else {"precision_at_k": production})  # fmt: skip
    token_file = tmp_path / "token"
    token_file.write_text(ID_TOKEN)
    env = {"PATH": f"{stubs.bin}:{os.environ['PATH']}", "STUB_DIR": str(stubs.dir), "RETRAIN_OUT": str(tmp_path),
           "MODEL_NAME": "recsys", "RETRAIN_RUN_ID": "0123456789abcdef", "DATA_BUCKET": "ml-data",
           "RUNS_PREFIX": "runs",
           "EVAL_METRIC": "precision_at_k", "EVAL_MARGIN": "0.02", "AWS_ROLE_ARN": ROLE,
           "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file)}  # fmt: skip
    result = _run(["sh", str(SCRIPTS / "evaluate.sh")], 30, env=env)
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["passed"] is passed and (result.returncode == 0) is passed, result.stdout
    if not passed:
        reason = (tmp_path / "failure.txt").read_text()
        assert reason.startswith("evaluation: candidate precision_at_k 0.29 is below 0.294"), reason
    metrics = "s3://ml-data/runs/recsys/0123456789abcdef/output/metrics"
    assert [c["argv"][2] for c in stubs.calls("aws")] == [f"{metrics}/candidate.json", f"{metrics}/production.json"]


def test_rendering_refuses_unsafe_values(tmp_path: Path, stubs: Stubs) -> None:
    """A value that could break out of the YAML it goes into stops train.sh before anything is applied."""
    _which("envsubst", "sh")
    env = {"PATH": f"{stubs.bin}:{os.environ['PATH']}", "STUB_DIR": str(stubs.dir), "RETRAIN_OUT": str(tmp_path),
           "MODEL_NAME": "recsys", "RETRAIN_RUN_ID": "0123456789abcdef", "DATA_BUCKET": "ml-data",
           "RUNS_PREFIX": "runs",
           "AWS_REGION": REGION, "EKS_CLUSTER": "c1", "TRAINING_NAMESPACE": "ml", "TRAINING_SERVICE_ACCOUNT": "sa",
           "TRAINING_IMAGE": "img:1", "TRAINING_CPU": "2", "TRAINING_MEMORY": "4Gi",
           "TRAINING_DEADLINE_MINUTES": "60", "RETRAIN_JOB_TEMPLATE": str(JOB_TEMPLATE),
           "RETRAIN_TMP": str(tmp_path / "tmp"), "RETRAIN_REASONS": 'drift"\n  hostNetwork: true'}  # fmt: skip
    result = _run(["sh", str(SCRIPTS / "train.sh")], 30, env=env)
    assert result.returncode == 1, result.stdout
    assert "RETRAIN_REASONS must be one line" in (tmp_path / "failure.txt").read_text()
    assert stubs.calls() == []


def test_a_run_for_another_model_is_refused(tmp_path: Path) -> None:
    """A pipeline triggered for the wrong model stops before it reports or trains anything."""
    fake = CallbackStub([OK])
    try:
        env = {"PATH": os.environ["PATH"], "RETRAIN_OUT": str(tmp_path), "CI_JOB_STAGE": "fetch-data",
               "MODEL_NAME": "recsys", "RETRAIN_MODEL": "search", "RETRAIN_RUN_ID": "0123456789abcdef",
               "RETRAIN_CALLBACK_URL": fake.url, "RETRAIN_CALLBACK_TOKEN": "t"}  # fmt: skip
        result = _run(["sh", str(SCRIPTS / "stage.sh"), "start"], 30, env=env)
    finally:
        fake.close()
    assert result.returncode == 1 and fake.requests == [], result.stdout
    assert "retrains recsys, but run 0123456789abcdef is for search" in (tmp_path / "failure.txt").read_text()
