"""Offline validation of the deployment files (no Docker engine, no cluster).

- docker-compose.yml: the Compose Specification's JSON schema (as vendored by `check-jsonschema`),
  plus the structure the stack relies on (profiles, GPU reservation, health checks, volumes);
- every DAE_ variable set in compose, the Dockerfiles and the Kubernetes manifests is a real setting
  of :class:`pipeline.settings.Settings` with a valid value, and every `dae` command line they run
  uses real commands and options of :mod:`pipeline.cli.app`;
- deploy/k8s: the Kubernetes API schemas (`kubernetes-validate`, strict: unknown fields are errors),
  the ServiceMonitor (a CRD) by a minimal check, KEDA's ScaledObject and TriggerAuthentication
  (deploy/k8s/keda) against the CRDs' schemas vendored in tests/schemas/, and cross-references
  between the manifests (the autoscaler's bounds against the partitions and the rebalance cost);
- deploy/offline: the override for machines without a registry changes only images and build
  arguments, and names only images its build script makes;
- the Grafana dashboard's PromQL names only metrics a fresh WorkerMetrics registry exports;
- `promtool check config` on the Prometheus file compose mounts, `amtool check-config` on
  Alertmanager's (each skipped when the tool is not installed).

Each checker is shown to reject a deliberately broken input.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate.utils as k8s_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from pipeline.monitor.metrics import WorkerMetrics
from pipeline.settings import Settings
from tests.promrules import PROMETHEUS_SERIES, TARGET_LABELS, exported_metrics, selectors

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "deploy" / "docker"
K8S = ROOT / "deploy" / "k8s"
KEDA = K8S / "keda"  # a kustomize component; deploy/k8s-keda is the base with it
K8S_KEDA = ROOT / "deploy" / "k8s-keda"
OFFLINE = ROOT / "deploy" / "offline"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "dae-worker.json"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
# Oldest Kubernetes minor the manifests target, and the newest the installed package knows.
K8S_VERSIONS = ("1.29.0", k8s_validate.latest_version())
DAE_IMAGE = re.compile(r"(^|/)dae-stream:")


# ============================================================================ shared helpers
def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


_INTERP = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str] | None = None):
    """Compose's variable interpolation on every string of a loaded file, with the file's own
    defaults (``${X:-d}``), ``env`` for the rest (empty when unset), ``$$`` for a literal ``$``."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        val = env.get(name)
        if op in (":-", "-"):
            if val is None or (op == ":-" and val == ""):
                return interpolate(arg, env)
            return val
        if op in (":?", "?") and val is None:
            raise ValueError(f"required variable {name}: {arg}")
        if op in (":+", "+"):
            return interpolate(arg, env) if val else ""
        return val or ""

    return _INTERP.sub(sub, value)


def compose_file() -> dict:
    return interpolate(load_yaml(COMPOSE))


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def is_dae_service(service: dict) -> bool:
    return bool(DAE_IMAGE.search(str(service.get("image", ""))))


def k8s_docs(dirs: tuple[Path, ...] = (K8S, KEDA)) -> list[tuple[str, dict]]:
    """(file, object) of every manifest of the base and the KEDA overlay (kustomizations aside)."""
    out = []
    for path in sorted(p for d in dirs for p in d.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((str(path.relative_to(K8S)), doc))
    return out


def k8s_by_kind(kind: str) -> list[dict]:
    return [d for _, d in k8s_docs() if d.get("kind") == kind]


def pod_spec(doc: dict) -> dict:
    kind = doc["kind"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return doc["spec"]["template"]["spec"]
    raise ValueError(kind)


# ==================================================================== (b) settings variables
def _fields(model) -> dict[str, object]:
    return {name.lower(): info for name, info in model.model_fields.items()}


def setting_problems(env: dict[str, str]) -> list[str]:
    """Problems with the DAE_ variables of ``env`` (other names are ignored): each must name a
    setting (``DAE_<SECTION>__<FIELD>``) and all of them together must build a valid ``Settings``.

    The walk over the model's fields is needed: pydantic-settings refuses an unknown *nested* key
    (``DAE_KAFKA__BOOTSTRAP_SERVER``, extra="forbid") but silently ignores an unknown top-level
    variable such as ``DAE_KAFKA_BOOTSTRAP_SERVERS`` (one underscore), so a typo there would go
    unnoticed and the process would run on the default.
    """
    problems = []
    dae = {k: v for k, v in env.items() if k.upper().startswith("DAE_")}
    sections = _fields(Settings)
    for name in dae:
        parts = name[len("DAE_"):].lower().split("__")
        if len(parts) != 2 or not all(parts):
            problems.append(f"{name}: not DAE_<SECTION>__<FIELD>")
            continue
        section, field = parts
        if section not in sections:
            problems.append(f"{name}: no settings section {section!r} (sections: {', '.join(sorted(sections))})")
            continue
        if field not in _fields(sections[section].annotation):
            problems.append(f"{name}: section {section!r} has no setting {field!r}")
    if problems:
        return problems
    # Values: build the settings from exactly these variables, as the process would.
    mp = pytest.MonkeyPatch()
    try:
        for key in [k for k in __import__("os").environ if k.upper().startswith("DAE_")]:
            mp.delenv(key)
        for key, value in dae.items():
            mp.setenv(key, value)
        Settings(_env_file=None)
    except Exception as exc:  # pydantic ValidationError or SettingsError (bad JSON for a tuple)
        problems.append(f"invalid value: {exc}")
    finally:
        mp.undo()
    return problems


def test_setting_checker_catches_typos_and_bad_values():
    good = {"DAE_KAFKA__BOOTSTRAP_SERVERS": "kafka:9092", "DAE_KAFKA__RAW_TOPICS": '["a", "b"]', "PATH": "/bin"}
    assert setting_problems(good) == []
    # A nested typo: pydantic itself refuses it (extra="forbid") ...
    assert any("bootstrap_server'" in p for p in setting_problems({"DAE_KAFKA__BOOTSTRAP_SERVER": "kafka:9092"}))
    # ... but a top-level one pydantic-settings would silently ignore; the field walk catches it.
    assert setting_problems({"DAE_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"})
    assert setting_problems({"DAE_KAFKAS__BOOTSTRAP_SERVERS": "kafka:9092"})
    assert setting_problems({"DAE_METRICS__PORT": "not-a-port"})
    assert setting_problems({"DAE_KAFKA__RAW_TOPICS": "dae.raw"})  # a tuple needs JSON
    assert setting_problems({"DAE_WORKER__SHUTDOWN_TIMEOUT_S": "0"})


def test_pydantic_alone_ignores_a_top_level_typo(monkeypatch):
    """Why setting_problems walks the fields: this typo passes pydantic-settings unnoticed."""
    monkeypatch.setenv("DAE_KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092")
    assert Settings(_env_file=None).kafka.bootstrap_servers == Settings.model_fields["kafka"].default.bootstrap_servers


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV of a Dockerfile's final stage (``ENV K=V K2=V2`` with continuation lines)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages = re.split(r"(?im)^FROM\s", text)
    env: dict[str, str] = {}
    for line in stages[-1].splitlines():
        m = re.match(r"\s*ENV\s+(.*)", line, flags=re.I)
        if m:
            for tok in shlex.split(m.group(1)):
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    env[k] = v
    return env


def k8s_container_envs() -> list[tuple[str, dict[str, str]]]:
    """(name, full environment) of every container in the manifests: envFrom ConfigMaps/Secrets
    then env, as the kubelet composes them."""
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in k8s_by_kind("ConfigMap")}
    secrets = {d["metadata"]["name"]: {**d.get("data", {}), **d.get("stringData", {})} for d in k8s_by_kind("Secret")}
    out = []
    for fname, doc in k8s_docs():
        if doc["kind"] not in ("Deployment", "CronJob", "Job"):
            continue
        for c in pod_spec(doc).get("containers", []) + pod_spec(doc).get("initContainers", []):
            env: dict[str, str] = {}
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    env.update(configmaps[src["configMapRef"]["name"]])
                if "secretRef" in src:
                    env.update(secrets[src["secretRef"]["name"]])
            for e in c.get("env", []):
                env[e["name"]] = str(e.get("value", ""))
            out.append((f"{fname}:{doc['metadata']['name']}/{c['name']}", env))
    return out


def env_sources() -> list[tuple[str, dict[str, str]]]:
    sources = []
    for name, svc in compose_file()["services"].items():
        sources.append((f"docker-compose.yml:{name}", service_env(svc)))
    for path in sorted(DOCKER.glob("Dockerfile.*")):
        if path.suffix != ".dockerignore":
            sources.append((path.name, dockerfile_env(path)))
    for doc in k8s_by_kind("ConfigMap"):
        sources.append((f"ConfigMap {doc['metadata']['name']}", dict(doc.get("data", {}))))
    for doc in k8s_by_kind("Secret"):
        sources.append((f"Secret {doc['metadata']['name']}", {**doc.get("data", {}), **doc.get("stringData", {})}))
    sources += k8s_container_envs()
    return sources


def test_every_dae_variable_is_a_real_setting():
    sources = env_sources()
    names = {k for _, env in sources for k in env if k.startswith("DAE_")}
    # The scan saw the variables of every kind of file (compose, images, ConfigMap, Secret, env).
    assert {"DAE_KAFKA__BOOTSTRAP_SERVERS", "DAE_MODEL__REGISTRY", "DAE_METRICS__HOST",
            "DAE_KAFKA__SASL_USERNAME", "DAE_KAFKA__SASL_PASSWORD", "DAE_MODEL__DEVICE"} <= names, names
    problems = [f"{where}: {p}" for where, env in sources for p in setting_problems(env)]
    assert not problems, "\n".join(problems)


def test_dae_containers_are_configured_only_through_settings():
    compose = compose_file()
    for name, svc in compose["services"].items():
        if is_dae_service(svc):
            other = [k for k in service_env(svc) if not k.startswith("DAE_")]
            assert not other, f"{name}: environment outside the settings: {other}"
    for where, env in k8s_container_envs():
        other = [k for k in env if not k.startswith("DAE_")]
        assert not other, f"{where}: environment outside the settings: {other}"


# ------------------------------------------------------------------- `dae` command lines
def dae_invocations(command, entrypoint=None) -> list[list[str]]:
    """The `dae` argument lists a container runs: exec form with the image's ENTRYPOINT dae, or
    each `dae ...` of a `sh -c` script."""
    entry = entrypoint if entrypoint is not None else ["dae"]
    if isinstance(entry, str):
        entry = shlex.split(entry)
    command = command if isinstance(command, list) else shlex.split(command or "")
    argv = [*entry, *command]
    if argv[:1] == ["dae"]:
        return [argv[1:]]
    if argv[:1] and argv[0].endswith("sh") and "-c" in argv[1:3]:
        script = " ".join(argv[argv.index("-c") + 1:])
        calls = []
        for part in re.split(r"\|\||&&|;|\n", script):
            toks = shlex.split(part.replace(">/dev/null", " ").replace("2>&1", " "))
            if toks[:1] == ["dae"]:
                calls.append(toks[1:])
        return calls
    return []


def cli_problems(args: list[str]) -> list[str]:
    """Unknown commands or options in one `dae` argument list (against pipeline.cli.app's app)."""
    import typer

    from pipeline.cli.app import app

    cmd = typer.main.get_command(app)
    rest = list(args)
    while hasattr(cmd, "commands"):  # a group (typer may bring its own click: no isinstance)
        if not rest or rest[0] not in cmd.commands:
            return [f"dae {' '.join(args)}: no command {rest[:1]} (has {sorted(cmd.commands)})"]
        cmd = cmd.commands[rest.pop(0)]
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    return [f"dae {' '.join(args)}: no option {tok.split('=')[0]}" for tok in rest
            if tok.startswith("--") and tok.split("=")[0] not in opts]


def all_dae_invocations() -> list[tuple[str, list[str]]]:
    out = []
    for name, svc in compose_file()["services"].items():
        if is_dae_service(svc):
            calls = dae_invocations(svc.get("command", []), svc.get("entrypoint"))
            assert calls, f"compose {name}: no dae command found"
            out += [(f"compose {name}", c) for c in calls]
    for fname, doc in k8s_docs():
        if doc["kind"] in ("Deployment", "CronJob", "Job"):
            for c in pod_spec(doc)["containers"]:
                calls = dae_invocations(c.get("args", []), c.get("command"))
                assert calls, f"{fname}/{c['name']}: no dae command found"
                out += [(f"{fname}/{c['name']}", call) for call in calls]
    return out


def test_dae_command_lines_use_real_commands_and_options():
    calls = all_dae_invocations()
    commands = {c[0] for _, c in calls}
    assert {"worker", "simulate", "retrain", "train", "models"} <= commands, commands
    problems = [f"{where}: {p}" for where, c in calls for p in cli_problems(c)]
    assert not problems, "\n".join(problems)
    assert cli_problems(["retrain", "--evry", "6h"]) and cli_problems(["retrian"])


# ============================================================================ (a) compose
def compose_schema() -> dict:
    """The Compose Specification schema as vendored by check-jsonschema (from compose-spec/compose-spec)."""
    return json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())


def compose_errors(doc: dict) -> list[str]:
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in cls(schema).iter_errors(doc)]


def test_compose_validates_against_the_compose_spec():
    errors = compose_errors(compose_file())
    assert not errors, "\n".join(errors)


def test_compose_schema_rejects_broken_files():
    doc = compose_file()
    typo = copy.deepcopy(doc)
    typo["services"]["dae-worker"]["enviroment"] = typo["services"]["dae-worker"].pop("environment")
    assert any("enviroment" in e for e in compose_errors(typo))
    bad_condition = copy.deepcopy(doc)
    bad_condition["services"]["dae-worker"]["depends_on"]["kafka"]["condition"] = "service_ready"
    assert compose_errors(bad_condition)


def test_interpolation_matches_compose():
    assert interpolate("${A:-4}") == "4" and interpolate("${A:-4}", {"A": "8"}) == "8"
    assert interpolate("$$1 ${A}x") == "$1 x" and interpolate("${A-${B:-2}}") == "2"


def test_compose_stack_structure():
    doc = compose_file()
    svc = doc["services"]
    # Kafka: official image, KRaft single node, and the four topics created by a one-shot service.
    kafka = svc["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    kenv = service_env(kafka)
    assert kenv["KAFKA_PROCESS_ROLES"] == "broker,controller" and "KAFKA_CONTROLLER_QUORUM_VOTERS" in kenv
    # KRaft's cluster id is a base64url UUID (16 bytes); anything else fails the storage format.
    import base64

    assert len(base64.urlsafe_b64decode(kenv["CLUSTER_ID"] + "==")) == 16
    init = svc["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = " ".join(init["command"])
    defaults = Settings.model_fields["kafka"].default
    for topic in (*defaults.raw_topics, defaults.clean_topic, defaults.alerts_topic, defaults.dead_letter_topic):
        assert re.search(rf"create {re.escape(topic)} ", script), f"kafka-init does not create {topic}"
    # Partition counts are compose variables with defaults.
    raw = load_yaml(COMPOSE)["services"]["kafka-init"]["environment"]
    assert all(str(v).startswith("${") for v in raw.values()), raw

    # Workers: GPU under profile gpu with a device reservation, CPU under profile cpu; both answer
    # as `dae-worker` (Prometheus' target) and get a grace period above the worker's shutdown.
    gpu, cpu = svc["dae-worker"], svc["dae-worker-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert gpu["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"
    assert cpu["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d.get("driver") == "nvidia" for d in devices)
    assert "dae-worker" in cpu["networks"]["default"]["aliases"]
    for w in (gpu, cpu):
        env = service_env(w)
        assert env["DAE_METRICS__HOST"] == "0.0.0.0"
        grace = float(w["stop_grace_period"].rstrip("s"))
        assert grace > float(env["DAE_WORKER__SHUTDOWN_TIMEOUT_S"])
        assert w["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    assert service_env(gpu)["DAE_MODEL__DEVICE"] == "cuda"

    # Simulator and retraining job.
    assert dae_invocations(svc["simulator"]["command"])[0][:2] == ["simulate", "--realtime"]
    assert dae_invocations(svc["retrain"]["command"])[0][:3] == ["retrain", "--every", "6h"]

    # The registry: a named volume at DAE_MODEL__REGISTRY wherever a dae process runs with one;
    # read-only for the workers.
    assert "registry" in doc["volumes"]
    # No anonymous volumes (left behind by `down`): the Kafka image's declared ones are tmpfs.
    kafka_volumes = {"/var/lib/kafka/data", "/etc/kafka/secrets", "/mnt/shared/config"}
    for name in ("kafka", "kafka-init"):
        mounted = {v.split(":")[1] for v in svc[name].get("volumes", [])} | set(svc[name].get("tmpfs", []))
        assert kafka_volumes <= mounted, (name, kafka_volumes - mounted)
    for name in ("dae-worker", "dae-worker-cpu", "retrain", "model-init"):
        mounts = [v.split(":") for v in svc[name]["volumes"]]
        reg = service_env(svc[name])["DAE_MODEL__REGISTRY"]
        assert any(m[0] == "registry" and m[1] == reg for m in mounts), (name, mounts)
        assert any(m[0] == "registry" and m[-1] == "ro" for m in mounts) == name.startswith("dae-worker")

    # Every dae process runs under an init: as PID 1 it would never get SIGTERM's default action
    # (`dae simulate` and `dae retrain --every` then ignored `docker compose stop` until killed).
    for name, s in svc.items():
        if is_dae_service(s):
            assert s.get("init") is True, f"{name}: no init"

    # Restart policies everywhere; health checks on every long-running service.
    for name, s in svc.items():
        assert "restart" in s, f"{name}: no restart policy"
        long_running = s["restart"] in ("always", "unless-stopped")
        is_worker = name.startswith("dae-worker")
        if long_running and name != "retrain":
            hc = s.get("healthcheck", {})
            assert hc and not hc.get("disable"), f"{name}: no health check"
        if is_worker:
            assert s["healthcheck"]["test"][-1].count("/metrics") == 1

    # Monitoring: Prometheus mounts deploy/prometheus, Alertmanager its file, Grafana provisioning.
    assert svc["prometheus"]["image"].startswith("prom/prometheus:")
    assert "./deploy/prometheus:/etc/prometheus:ro" in svc["prometheus"]["volumes"]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in svc["alertmanager"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in svc["grafana"]["volumes"]


def test_offline_override_changes_only_images_and_build_arguments():
    """deploy/offline/compose.offline.yml (machines without a container registry): the main file's
    services with local images; commands, environments, health checks and volumes stay the main
    file's, so that the smoke run (deploy/offline/smoke.sh) exercises them."""
    main = compose_file()["services"]
    override = interpolate(load_yaml(OFFLINE / "compose.offline.yml"))["services"]
    built = (OFFLINE / "images.sh").read_text()
    assert set(override) <= set(main)
    for name, svc in override.items():
        assert set(svc) <= {"image", "pull_policy", "build", "profiles"}, (name, set(svc))
        assert set(svc.get("build", {})) <= {"args"}, name
        if "image" in svc:
            # Each local stand-in is one that images.sh builds (the names are spelled out there).
            repo, tag = svc["image"].split(":")
            assert re.search(rf"{re.escape(repo)}:(\$kafka_version|{re.escape(tag)})", built), svc["image"]
            assert svc.get("pull_policy") == "never", name
        if "build" in svc:
            assert "build" in main[name], name
            assert svc["build"]["args"]["PYTHON_IMAGE"] in built
    # Every service of the cpu profile with a registry image gets a local one, or is left out.
    cpu = {n: s for n, s in main.items() if not s.get("profiles") or "cpu" in s["profiles"]}
    for name, svc in cpu.items():
        if "build" not in svc:
            o = override.get(name, {})
            assert "image" in o or not set(o.get("profiles", ["cpu"])) & {"cpu"}, name
    # The merged file is still a valid compose file (mappings merge, scalars are replaced).
    def merge(a, b):
        return {k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
                for k, v in {**a, **b}.items()}
    merged = compose_file()
    merged["services"] = {n: merge(s, override.get(n, {})) for n, s in main.items()}
    assert compose_errors(merged) == []


def test_compose_paths_exist():
    """Build contexts, Dockerfiles and bind-mount sources (deploy/prometheus is written separately:
    its absence alone is tolerated, with a skip at the end)."""
    missing_prometheus = False
    for name, s in compose_file()["services"].items():
        if "build" in s:
            assert (ROOT / s["build"]["context"] / s["build"]["dockerfile"]).is_file(), name
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                path = (ROOT / src).resolve()
                if not path.exists() and path == (ROOT / "deploy" / "prometheus").resolve():
                    missing_prometheus = True
                    continue
                assert path.exists(), f"{name}: bind-mount source {src} is missing"
    if missing_prometheus:
        pytest.skip("deploy/prometheus/ does not exist yet (written separately)")


# ========================================================================= images (Dockerfiles)
def stages(path: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", path.read_text())
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return ["FROM " + s for s in re.split(r"(?im)^FROM\s", text)[1:]]


@pytest.mark.parametrize("flavour,base", [("cpu", r"python:3\.11-slim"), ("gpu", r"nvidia/cuda:12\.[0-9.]+-runtime-ubuntu22\.04")])
def test_dockerfile(flavour, base):
    path = DOCKER / f"Dockerfile.{flavour}"
    text = path.read_text()
    parts = stages(path)
    assert len(parts) >= 2 and any(re.match(r"FROM \S+ AS builder", p, flags=re.I) for p in parts[:-1]), \
        "multi-stage with a builder"
    final = parts[-1]
    args = dict(re.findall(r"(?m)^ARG (\w+)=(\S+)", text))
    final_base = re.match(r"FROM (\S+)", final).group(1)
    final_base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], final_base)
    assert re.fullmatch(base + r"[-\w.]*", final_base), final_base
    # The final stage copies the venv (and, where the package sits apart, the package) and builds nothing.
    assert re.search(r"COPY --from=(builder|deps) /opt/venv /opt/venv", final)
    if "/opt/app" in final:  # the package outside the venv: its own small layer, on the paths
        assert re.search(r"COPY --from=builder /opt/app /opt/app", final)
        env_final = dockerfile_env(path)
        assert env_final["PYTHONPATH"] == "/opt/app" and env_final["PATH"].startswith("/opt/app/bin:")
    assert not re.search(r"pip install|build-essential|gcc|g\+\+|-dev\b|python3[.\d]*-venv", final), final
    user = re.findall(r"(?m)^USER (\S+)", final)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'(?m)^ENTRYPOINT \["dae"\]', final)
    assert re.search(r"(?m)^EXPOSE 9108\b", final)
    # /registry belongs to the image's user (a named volume mounted there starts writable); no
    # VOLUME instruction, which gave every container not mounting it an anonymous volume.
    assert re.search(r"mkdir -p /registry && chown dae:dae /registry", final)
    assert not re.search(r"(?m)^VOLUME ", final)
    hc = re.search(r"(?m)^HEALTHCHECK .*", final).group(0)
    assert "/metrics" in hc and "DAE_METRICS__PORT" in hc
    env = dockerfile_env(path)
    assert env["DAE_MODEL__REGISTRY"] == "/registry" and env["DAE_METRICS__HOST"] == "0.0.0.0"
    assert setting_problems(env) == []
    # What the build stages copy exists, and the dependency layers do not depend on the sources or
    # the README (a docs edit would otherwise download torch again); the Dockerfile-specific ignore
    # file keeps the context small.
    first_copy = re.search(r"(?m)^COPY (?!--from)(.+) \S+$", "\n".join(parts[:-1])).group(1)
    assert first_copy.split() == ["pyproject.toml"], first_copy
    for src in re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", "\n".join(parts[:-1])):
        for s in src.split():
            assert (ROOT / s).exists(), s
    ignore = [ln.strip() for ln in (DOCKER / f"Dockerfile.{flavour}.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*" or ".venv" in ignore, "the build context must leave out .venv"
    # The classic builder (DOCKER_BUILDKIT=0, or a docker CLI without buildx) reads only the
    # context's own .dockerignore: the same list, or it sends the whole repository (.venv included).
    root_ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                   if ln.strip() and not ln.startswith("#")]
    assert root_ignore == ignore
    # BuildKit would fetch a `# syntax=` frontend image from a registry; the built-in one suffices.
    assert not re.search(r"(?m)^# *syntax=", text)


# ================================================================================ (c) k8s
def k8s_errors(doc: dict, version: str) -> list[str]:
    try:
        k8s_validate.validate(doc, version, strict=True)
    except k8s_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


CRD_CHECKS = {}


def crd(kind):
    def register(fn):
        CRD_CHECKS[kind] = fn
        return fn
    return register


@crd("ServiceMonitor")
def check_service_monitor(doc: dict) -> list[str]:
    """Minimal check of the Prometheus operator's CRD (its schema is not in kubernetes-validate)."""
    p = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        p.append(f"apiVersion {doc.get('apiVersion')!r}")
    spec = doc.get("spec", {})
    if not spec.get("selector", {}).get("matchLabels"):
        p.append("spec.selector.matchLabels missing")
    eps = spec.get("endpoints") or []
    if not eps:
        p.append("spec.endpoints missing")
    allowed = {"port", "targetPort", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
               "relabelings", "metricRelabelings", "tlsConfig", "bearerTokenSecret", "basicAuth", "params"}
    for ep in eps:
        if "port" not in ep:
            p.append("endpoint without a port name")
        p += [f"endpoint field {k!r} unknown" for k in ep if k not in allowed]
    return p


def keda_schema(kind: str) -> dict:
    """The vendored openAPIV3Schema of a KEDA CRD (tests/schemas/, source named in its $comment)."""
    return json.loads((SCHEMAS / f"keda_{kind.lower()}_v1alpha1.json").read_text())


def crd_schema_errors(doc: dict, schema: dict, api_version: str) -> list[str]:
    p = [] if doc.get("apiVersion") == api_version else [f"apiVersion {doc.get('apiVersion')!r}"]
    validator = jsonschema.Draft7Validator(schema)
    return p + [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in validator.iter_errors(doc)]


@crd("ScaledObject")
def check_scaled_object(doc: dict) -> list[str]:
    p = crd_schema_errors(doc, keda_schema("ScaledObject"), "keda.sh/v1alpha1")
    spec = doc.get("spec", {})
    # The CRD's CEL rule (x-kubernetes-validations), which JSON Schema cannot express.
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        p.append("minReplicaCount must be less than or equal to maxReplicaCount")
    for t in spec.get("triggers", []):
        if t.get("type") == "kafka":
            p += [f"kafka trigger: unknown metadata {k!r}" for k in t.get("metadata", {}) if k not in KEDA_KAFKA_METADATA]
    return p


@crd("TriggerAuthentication")
def check_trigger_authentication(doc: dict) -> list[str]:
    p = crd_schema_errors(doc, keda_schema("TriggerAuthentication"), "keda.sh/v1alpha1")
    for ref in doc.get("spec", {}).get("secretTargetRef", []):
        if ref.get("parameter") not in KEDA_KAFKA_AUTH:
            p.append(f"secretTargetRef: the Kafka scaler has no parameter {ref.get('parameter')!r}")
    return p


# The Kafka scaler's trigger metadata and authentication parameters (keda.sh/docs/latest/scalers/apache-kafka/):
# the CRD types `metadata` as a free map of strings, so a misspelt key would be silently ignored.
KEDA_KAFKA_METADATA = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
    "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "version", "partitionLimitation", "sasl", "saslTokenProvider", "tls",
    "unsafeSsl",
}
KEDA_KAFKA_AUTH = {"sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword", "keyEncoding",
                   "unsafeSsl", "oauthTokenEndpointUri", "scopes", "oauthExtensions", "awsRegion", "awsEndpoint",
                   "saslTokenProvider"}


def test_k8s_manifests_cover_the_deployment():
    kinds = {d["kind"] for _, d in k8s_docs()}
    assert {"Deployment", "CronJob", "PersistentVolumeClaim", "ConfigMap", "Secret", "Service",
            "ServiceMonitor", "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication"} <= kinds, kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate_against_the_api_schemas(version):
    problems = []
    for fname, doc in k8s_docs():
        if doc["kind"] in CRD_CHECKS:
            problems += [f"{fname}: {p}" for p in CRD_CHECKS[doc["kind"]](doc)]
        else:
            problems += [f"{fname} ({doc['kind']}): {e}" for e in k8s_errors(doc, version)]
    assert not problems, "\n".join(problems)


def test_k8s_validation_rejects_broken_manifests():
    version = K8S_VERSIONS[-1]
    dep = copy.deepcopy(k8s_by_kind("Deployment")[0])
    assert k8s_errors(dep, version) == []
    typo = copy.deepcopy(dep)
    port = typo["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    port["contianerPort"] = port.pop("containerPort")
    assert k8s_errors(typo, version)
    wrong_type = copy.deepcopy(dep)
    wrong_type["spec"]["replicas"] = "two"
    assert k8s_errors(wrong_type, version)
    no_selector = copy.deepcopy(dep)
    del no_selector["spec"]["selector"]
    assert k8s_errors(no_selector, version)
    sm = copy.deepcopy(k8s_by_kind("ServiceMonitor")[0])
    sm["spec"]["endpoints"][0]["intervall"] = "10s"
    assert check_service_monitor(sm)


def test_keda_checks_reject_broken_objects():
    [so] = k8s_by_kind("ScaledObject")
    [ta] = k8s_by_kind("TriggerAuthentication")
    assert check_scaled_object(so) == [] and check_trigger_authentication(ta) == []
    typo = copy.deepcopy(so)
    typo["spec"]["maxReplicas"] = typo["spec"].pop("maxReplicaCount")
    assert any("maxReplicas" in e for e in check_scaled_object(typo))
    negative = copy.deepcopy(so)
    negative["spec"]["pollingInterval"] = 0
    assert check_scaled_object(negative)
    inverted = copy.deepcopy(so)
    inverted["spec"]["minReplicaCount"] = inverted["spec"]["maxReplicaCount"] + 1
    assert any("minReplicaCount" in e for e in check_scaled_object(inverted))
    behavior = copy.deepcopy(so)
    behavior["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["policies"][0].pop("value")
    assert check_scaled_object(behavior)
    metadata = copy.deepcopy(so)
    metadata["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "10"
    assert any("lagTreshold" in e for e in check_scaled_object(metadata))
    no_triggers = copy.deepcopy(so)
    no_triggers["spec"]["triggers"] = []
    assert check_scaled_object(no_triggers)
    bad_ref = copy.deepcopy(ta)
    bad_ref["spec"]["secretTargetRef"][0].pop("key")
    assert check_trigger_authentication(bad_ref)
    bad_param = copy.deepcopy(ta)
    bad_param["spec"]["secretTargetRef"][0]["parameter"] = "user"
    assert check_trigger_authentication(bad_param)


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_k8s_manifests_are_consistent():
    [dep] = k8s_by_kind("Deployment")
    [svc] = k8s_by_kind("Service")
    [sm] = k8s_by_kind("ServiceMonitor")
    [pdb] = k8s_by_kind("PodDisruptionBudget")
    [cm] = k8s_by_kind("ConfigMap")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert _matches(dep["spec"]["selector"]["matchLabels"], pod_labels)
    assert _matches(svc["spec"]["selector"], pod_labels)
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert _matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    assert {ep["port"] for ep in sm["spec"]["endpoints"]} <= port_names
    # The Prometheus job is the Service's name: the one the rules and dashboard expect.
    assert svc["metadata"]["name"] == "dae-worker"

    data = cm["data"]
    spec = pod_spec(dep)
    [c] = spec["containers"]
    metrics_port = int(data["DAE_METRICS__PORT"])
    assert data["DAE_METRICS__HOST"] == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == metrics_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/metrics" and get["port"] in ("metrics", metrics_port), probe
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Graceful termination outlasts the worker's own shutdown (finish batch, flush, commit).
    assert spec["terminationGracePeriodSeconds"] > float(data["DAE_WORKER__SHUTDOWN_TIMEOUT_S"]) + 5
    # More consumers than partitions would idle.
    assert dep["spec"]["replicas"] <= int(data["DAE_KAFKA__PARTITIONS"])
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0

    # Every referenced ConfigMap, Secret and claim exists; the registry is mounted at its setting.
    names = {(d["kind"], d["metadata"]["name"]) for _, d in k8s_docs()}
    for fname, doc in k8s_docs():
        if doc["kind"] not in ("Deployment", "CronJob", "Job"):
            continue
        ps = pod_spec(doc)
        assert ps["securityContext"]["runAsNonRoot"] is True, fname
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in ps["volumes"] if "persistentVolumeClaim" in v}
        assert all(("PersistentVolumeClaim", n) in names for n in claims.values()), fname
        for ctr in ps["containers"]:
            for src in ctr.get("envFrom", []):
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in src:
                        assert (kind, src[key]["name"]) in names, (fname, src)
            mounts = {m["mountPath"]: m for m in ctr["volumeMounts"] if m["name"] in claims}
            assert "/registry" in mounts, fname
            if doc["kind"] == "Deployment":
                assert mounts["/registry"].get("readOnly") is True
    [cron] = k8s_by_kind("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert dae_invocations(pod_spec(cron)["containers"][0]["args"], pod_spec(cron)["containers"][0]["command"])[0][0] == "retrain"


def test_k8s_secret_holds_the_sasl_credentials():
    [secret] = k8s_by_kind("Secret")
    assert set(secret["stringData"]) == {"DAE_KAFKA__SASL_USERNAME", "DAE_KAFKA__SASL_PASSWORD"}
    [cm] = k8s_by_kind("ConfigMap")
    assert not any("PASSWORD" in k or "USERNAME" in k for k in cm["data"]), "credentials belong in the Secret"


def test_keda_scales_the_worker_within_partitions_and_rebalance_cost():
    [so] = k8s_by_kind("ScaledObject")
    [ta] = k8s_by_kind("TriggerAuthentication")
    [dep] = k8s_by_kind("Deployment")
    [cm] = k8s_by_kind("ConfigMap")
    [secret] = k8s_by_kind("Secret")
    data, spec = cm["data"], so["spec"]
    settings = Settings.model_fields["kafka"].default
    assert spec["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    # Never more workers than raw partitions (one more consumer would idle), never zero.
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"] <= int(data["DAE_KAFKA__PARTITIONS"])
    [trigger] = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    # The scaler watches the workers' group on their raw topic, on their brokers, as they connect.
    assert meta["bootstrapServers"] == data["DAE_KAFKA__BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == data["DAE_KAFKA__GROUP_ID"]
    assert meta["topic"] in json.loads(data["DAE_KAFKA__RAW_TOPICS"])
    assert meta["allowIdleConsumers"] == "false" and int(meta["lagThreshold"]) > 0
    assert meta["offsetResetPolicy"] == "earliest"  # the workers' auto_offset_reset (pipeline/kafka/clients.py)
    protocol = data["DAE_KAFKA__SECURITY_PROTOCOL"]
    assert (meta.get("tls") == "enable") == protocol.endswith("SSL")
    assert meta.get("sasl", "none") == data.get("DAE_KAFKA__SASL_MECHANISM", "none").lower().replace("-sha-", "_sha")
    assert trigger["authenticationRef"]["name"] == ta["metadata"]["name"]
    refs = {r["parameter"]: r for r in ta["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password"}
    for param, key in (("username", "DAE_KAFKA__SASL_USERNAME"), ("password", "DAE_KAFKA__SASL_PASSWORD")):
        assert refs[param]["name"] == secret["metadata"]["name"] and refs[param]["key"] == key
    # Each replica change is a group rebalance (consumption pauses up to a session timeout): scale
    # down only after minutes of lower lag, one worker per period; scale up at most once a period.
    session_s = settings.session_timeout_ms / 1000
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    down, up = behavior["scaleDown"], behavior["scaleUp"]
    assert down["stabilizationWindowSeconds"] >= 30 * session_s
    assert all(p["periodSeconds"] >= 6 * session_s for p in down["policies"] + up["policies"])
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": down["policies"][0]["periodSeconds"]}]
    # The component hands the replica count to the HPA: the Deployment's own count is removed;
    # deploy/k8s-keda is the base with the component.
    component = load_yaml(KEDA / "kustomization.yaml")
    assert component["kind"] == "Component" and component["resources"] == ["scaledobject.yaml"]
    [patch] = component["patches"]
    assert patch["target"]["kind"] == "Deployment" and patch["target"]["name"] == dep["metadata"]["name"]
    assert yaml.safe_load(patch["patch"]) == [{"op": "remove", "path": "/spec/replicas"}]
    overlay = load_yaml(K8S_KEDA / "kustomization.yaml")
    assert overlay["resources"] == ["../k8s"] and overlay["components"] == ["../k8s/keda"]


def test_kustomization_builds():
    kubectl = shutil.which("kubectl") or shutil.which("kustomize")
    if not kubectl:
        pytest.skip("neither kubectl nor kustomize on PATH")
    for path, dirs in ((K8S, (K8S,)), (K8S_KEDA, (K8S, KEDA))):
        args = [kubectl, "kustomize", str(path)] if kubectl.endswith("kubectl") else [kubectl, "build", str(path)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        built = [d for d in yaml.safe_load_all(proc.stdout) if d]
        assert len(built) == len(k8s_docs(dirs))
        assert all(d["metadata"].get("namespace") == "dae" for d in built if d["kind"] != "Namespace")
    assert not any("replicas" in d["spec"] for d in built if d["kind"] == "Deployment")


# ============================================================================= (d) Grafana
def worker_exports() -> dict[str, set[str]]:
    """Sample names (with label names) a fresh worker registry exports."""
    exported = exported_metrics(WorkerMetrics(CollectorRegistry()).registry)
    populated = WorkerMetrics(CollectorRegistry())
    populated.set_model("v1", "mlp", 256, 128)  # an Info's label names are known once set
    for name, labels in exported_metrics(populated.registry).items():
        exported.setdefault(name, set()).update(labels)
    return exported


def dashboard_queries(dash: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target (rows included) and template variable query."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if var.get("type") == "query" and q:
            m = re.fullmatch(r"\s*label_values\(\s*(.*?)\s*,\s*(\w+)\s*\)\s*", q)
            # label_values(metric, label): the metric part is PromQL; the label must exist on it.
            out.append((f"variable {var['name']}", f"{m.group(1)}{{{m.group(2)}=~\".*\"}}" if m else q))
    return out


def dashboard_problems(dash: dict, exported: dict[str, set[str]]) -> list[str]:
    problems = []
    for where, expr in dashboard_queries(dash):
        for sel in selectors(expr):
            if sel.metric is None:
                continue
            if sel.metric in PROMETHEUS_SERIES:
                known = TARGET_LABELS | ({"alertname", "alertstate", "severity"} if sel.metric.startswith("ALERTS") else set())
            elif sel.metric in exported:
                known = exported[sel.metric] | TARGET_LABELS
            else:
                problems.append(f"{where}: unknown metric {sel.metric!r}")
                continue
            problems += [f"{where}: {sel.metric} has no label {lab!r}" for lab in sel.labels if lab not in known]
    return problems


def test_dashboard_queries_only_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    exported = worker_exports()
    names = {s.metric for _, e in dashboard_queries(dash) for s in selectors(e)}
    # The scanner saw every metric the dashboard is for.
    assert {"dae_reconstruction_error_bucket", "dae_input_samples_total", "dae_end_to_end_latency_seconds_bucket",
            "dae_consumer_lag_messages", "dae_dead_letter_messages_total", "dae_alerts_raised_total",
            "dae_alerts_active", "dae_model_info"} <= names, names
    problems = dashboard_problems(dash, exported)
    assert not problems, "\n".join(problems)


def test_dashboard_checker_rejects_unknown_metrics_and_labels():
    dash = json.loads(DASHBOARD.read_text())
    exported = worker_exports()
    bad = copy.deepcopy(dash)
    bad["panels"][1]["targets"][0]["expr"] = "sum(rate(dae_reconstruction_errors_bucket[5m]))"
    assert dashboard_problems(bad, exported) == [f"{bad['panels'][1]['title']}: unknown metric 'dae_reconstruction_errors_bucket'"]
    bad_label = copy.deepcopy(dash)
    bad_label["panels"][1]["targets"][0]["expr"] = 'sum(dae_input_samples_total{stream_id="s1"})'
    assert any("no label 'stream_id'" in p for p in dashboard_problems(bad_label, exported))
    bad_var = copy.deepcopy(dash)
    bad_var["templating"]["list"][0]["query"]["query"] = "label_values(dae_made_up_total, job)"
    assert dashboard_problems(bad_var, exported)


def test_dashboard_panels_and_datasource():
    dash = json.loads(DASHBOARD.read_text())
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    uids = {d["uid"] for d in ds if d["type"] == "prometheus"}
    assert any(d["url"] == "http://prometheus:9090" for d in ds)

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    panels = [p for p in walk(dash["panels"]) if p["type"] != "row"]
    ids = [p["id"] for p in walk(dash["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert p["datasource"]["uid"] in uids, p["title"]
        assert p["targets"], p["title"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for word in ("reconstruction error", "throughput", "latency", "lag", "dead-letter", "alerts", "model version"):
        assert word in titles, word
    # Grafana's provider reads the directory compose mounts the dashboards into.
    prov = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dae.yml")["providers"][0]
    mounts = dict(v.split(":")[:2] for v in compose_file()["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == prov["options"]["path"]
    home = service_env(compose_file()["services"]["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert compose_mounted_file("grafana", home) == DASHBOARD


def test_dashboard_promql_parses():
    """promtool parses every dashboard query (Grafana's $__ intervals replaced by a duration)."""
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not on PATH (Debian's `prometheus` package)")
    dash = json.loads(DASHBOARD.read_text())
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": re.sub(r"\$__\w+", "5m", expr)}
        for i, (_, expr) in enumerate(dashboard_queries(dash))]}]}
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        proc = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ============================================================ (e) Prometheus and Alertmanager
def compose_mounted_file(service: str, container_path: str) -> Path:
    for v in compose_file()["services"][service]["volumes"]:
        src, dst = v.split(":")[:2]
        if src.startswith(".") and (container_path == dst or container_path.startswith(dst.rstrip("/") + "/")):
            return ROOT / src / Path(container_path).relative_to(dst)
    raise AssertionError(f"{service}: nothing mounted at {container_path}")


def compose_prometheus_config() -> Path:
    cmd = compose_file()["services"]["prometheus"]["command"]
    [flag] = [c for c in cmd if c.startswith("--config.file=")]
    return compose_mounted_file("prometheus", flag.split("=", 1)[1])


def test_promtool_checks_the_config_compose_uses():
    config = compose_prometheus_config()
    if not config.is_file():
        pytest.skip(f"{config.relative_to(ROOT)} does not exist yet (written separately)")
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not on PATH (Debian's `prometheus` package)")
    proc = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_compose_worker():
    config = compose_prometheus_config()
    if not config.is_file():
        pytest.skip(f"{config.relative_to(ROOT)} does not exist yet (written separately)")
    prom = load_yaml(config)
    [job] = [j for j in prom["scrape_configs"] if j["job_name"] == "dae-worker"]
    targets = {t for sc in job.get("static_configs", []) for t in sc["targets"]}
    svc = compose_file()["services"]
    answering = {"dae-worker"} | {a for s in svc.values() for a in s.get("networks", {}).get("default", {}).get("aliases", [])}
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in answering, target
        for name, s in svc.items():
            if name == host or host in s.get("networks", {}).get("default", {}).get("aliases", []):
                assert service_env(s)["DAE_METRICS__PORT"] == port, name


def test_prometheus_sends_alerts_to_the_compose_alertmanager():
    config = compose_prometheus_config()
    if not config.is_file():
        pytest.skip(f"{config.relative_to(ROOT)} does not exist yet (written separately)")
    prom = load_yaml(config)
    targets = {t for am in (prom.get("alerting") or {}).get("alertmanagers", [])
               for sc in am.get("static_configs", []) for t in sc.get("targets", [])}
    if not targets:
        pytest.xfail(f"{config.relative_to(ROOT)} has no `alerting:` section: compose's Alertmanager "
                     "receives nothing until it names alertmanager:9093")
    assert "alertmanager:9093" in targets, targets


def test_amtool_checks_the_alertmanager_config():
    assert compose_mounted_file("alertmanager", "/etc/alertmanager/alertmanager.yml") == ALERTMANAGER
    amtool = shutil.which("amtool")
    if not amtool:
        pytest.skip("amtool not on PATH (Debian's `prometheus-alertmanager` package)")
    proc = subprocess.run([amtool, "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
