"""deploy/ is valid offline: yamllint, compose-spec and Kubernetes schemas, settings names, and wiring."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from rag_rec.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BEHAVIOUR_OVERLAY = DEPLOY / "overlays" / "behaviour"
COMPOSE = DEPLOY / "docker-compose.yml"
SCHEMAS = DEPLOY / "schemas" / "k8s"
ENV_NAME = re.compile(r"\bRAG_REC_[A-Z0-9_]+\b")
COMPOSE_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and "schemas" not in p.parts)


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def by_kind(kind: str, name: str) -> dict[str, Any]:
    matches = [d for _, d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def schema_for(doc: dict[str, Any]) -> dict[str, Any]:
    group_version = doc["apiVersion"]
    group, _, version = group_version.rpartition("/")
    stem = f"{doc['kind'].lower()}-{group.split('.')[0] + '-' if group else ''}{version}"
    path = SCHEMAS / f"{stem}.json"
    assert path.is_file(), f"no vendored schema {path.name} for {doc['kind']} {group_version}"
    return json.loads(path.read_text())


def k8s_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema_for(doc))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def settings_path(name: str) -> list[str]:
    """RAG_REC_INDEX__URL -> ['index', 'url'], checked against the Settings model (AssertionError if unknown)."""
    parts = name.removeprefix("RAG_REC_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        assert part in model.model_fields, f"{name}: {model.__name__} has no field {part!r}"
        annotation = model.model_fields[part].annotation
        if i < len(parts) - 1:
            if getattr(annotation, "__origin__", None) is dict:
                return parts
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel), \
                f"{name}: {part!r} is not a settings section"
            model = annotation
    return parts


def resolve_compose(value: str) -> str:
    """Compose interpolation with the defaults (no variables set)."""
    return COMPOSE_VAR.sub(lambda m: m.group(2) or "", value)


def settings_from(env: dict[str, str], monkeypatch) -> Settings:
    import os

    for key in list(os.environ):
        if key.startswith("RAG_REC_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def app_owned_dirs(dockerfile: str) -> list[Path]:
    """The folders the image creates for its non-root user."""
    return [Path(d) for line in re.findall(r"install -d -o app -g app ((?:\S+ ?)+)$", dockerfile, re.MULTILINE)
            for d in line.split()]


def test_yamllint_passes():
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    files = [p for p in deploy_files() if p.suffix in {".yml", ".yaml"}]
    assert len(files) >= 6
    problems = [f"{p.relative_to(ROOT)}:{problem.line}: {problem.message}"
                for p in files for problem in linter.run(p.read_text(), config, str(p))]
    assert problems == []


def test_yamllint_catches_a_bad_file(tmp_path):
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    assert list(linter.run("a: 1\na: 2\n", config)), "duplicate keys must be reported"


def _check_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], check=False, capture_output=True, text=True, timeout=120)


def test_compose_matches_the_compose_spec(tmp_path):
    ok = _check_compose(COMPOSE)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["api"]["depends_on"]["qdrant"]["condition"] = "whenever"
    bad_path = tmp_path / "compose.yml"
    bad_path.write_text(yaml.safe_dump(broken))
    bad = _check_compose(bad_path)
    assert bad.returncode != 0 and "whenever" in bad.stdout + bad.stderr


def test_compose_wires_qdrant_vllm_and_the_api(monkeypatch):
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"qdrant", "vllm", "api", "indexer"} <= set(services)
    api = services["api"]
    assert api["depends_on"]["indexer"]["condition"] == "service_completed_successfully"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert services["indexer"]["command"] == ["rag-rec", "index"]
    env = {k: resolve_compose(str(v)) for k, v in api["environment"].items()}
    assert all(k.startswith("RAG_REC_") for k in env), "the API is configured only through RAG_REC_* variables"
    settings = settings_from(env, monkeypatch)
    assert settings.index.backend == "qdrant" and settings.index.url == "http://qdrant:6333"
    assert settings.llm.backend == "openai" and settings.llm.base_url == "http://vllm:8000/v1"
    served_name = services["vllm"]["command"][services["vllm"]["command"].index("--served-model-name") + 1]
    assert settings.llm.model == served_name
    assert settings.serve.host == "0.0.0.0" and settings.serve.api_keys == ["change-me"]
    published = {p.split(":")[-1] for p in api["ports"]}
    assert str(settings.serve.port) in published


def test_every_k8s_document_validates_against_its_schema():
    docs = k8s_documents()
    kinds = {d["kind"] for _, d in docs}
    assert {"StatefulSet", "Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Job"} <= kinds
    errors = {f"{path.name}:{d['kind']}/{d['metadata']['name']}": k8s_errors(d) for path, d in docs}
    assert {k: v for k, v in errors.items() if v} == {}


def test_k8s_schemas_reject_mistakes():
    deployment = copy.deepcopy(by_kind("Deployment", "rag-rec-api"))
    deployment["spec"]["replica"] = 3  # typo of `replicas`
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8000]
    errors = k8s_errors(deployment)
    assert any("replica" in e for e in errors) and any("port" in e for e in errors)


def test_qdrant_cluster_has_three_peers_and_replication_factor_two():
    qdrant = by_kind("StatefulSet", "qdrant")
    assert qdrant["spec"]["replicas"] == 3 and qdrant["spec"]["serviceName"] == "qdrant-headless"
    container = qdrant["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["QDRANT__CLUSTER__ENABLED"] == "true"
    assert env["QDRANT__STORAGE__COLLECTION__REPLICATION_FACTOR"] == "2"
    script = container["args"][0]
    assert "--bootstrap" in script and "qdrant-0.qdrant-headless:6335" in script
    headless = by_kind("Service", "qdrant-headless")
    assert headless["spec"]["clusterIP"] == "None" and 6335 in [p["port"] for p in headless["spec"]["ports"]]
    anti = qdrant["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"


def test_vllm_replicas_sit_behind_one_service():
    vllm = by_kind("Deployment", "vllm")
    assert vllm["spec"]["replicas"] >= 2
    labels = vllm["spec"]["template"]["metadata"]["labels"]
    service = by_kind("Service", "vllm")
    assert service["spec"]["selector"].items() <= labels.items()
    container = vllm["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_api_is_stateless_autoscaled_and_probed_on_healthz(monkeypatch):
    api = by_kind("Deployment", "rag-rec-api")
    pod = api["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert "volumeClaimTemplates" not in api["spec"]
    assert all("persistentVolumeClaim" not in v for v in pod.get("volumes", [])), "API replicas must be stateless"
    hpa = by_kind("HorizontalPodAutoscaler", "rag-rec-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rag-rec-api"}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    env = {**by_kind("ConfigMap", "rag-rec-config")["data"], **by_kind("Secret", "rag-rec-secrets")["stringData"]}
    settings = settings_from(env, monkeypatch)
    assert (settings.index.backend, settings.index.url) == ("qdrant", "http://qdrant:6333")
    assert (settings.llm.backend, settings.llm.base_url) == ("openai", "http://vllm:8000/v1")
    assert container["ports"][0]["containerPort"] == settings.serve.port
    assert by_kind("Service", "rag-rec-api")["spec"]["ports"][0]["targetPort"] == settings.serve.port
    assert settings.index.url.split("//")[1].split(":")[0] == by_kind("Service", "qdrant")["metadata"]["name"]


def test_every_rag_rec_variable_is_a_settings_field():
    names = {name for path in deploy_files() for name in ENV_NAME.findall(path.read_text())}
    assert {"RAG_REC_INDEX__BACKEND", "RAG_REC_INDEX__URL", "RAG_REC_LLM__BACKEND", "RAG_REC_LLM__BASE_URL"} <= names
    for name in sorted(names):
        settings_path(name)
    with pytest.raises(AssertionError, match="no field"):
        settings_path("RAG_REC_INDEX__ULR")


def test_dockerfile_runs_the_api_as_non_root_with_a_healthcheck():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r'^CMD \["rag-rec", "serve"\]$', text, re.MULTILINE)
    assert 'rag-rec = "rag_rec.cli:main"' in (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^USER 10001$", text, re.MULTILINE) and "/healthz" in text
    port = re.search(r"RAG_REC_SERVE__PORT=(\d+)", text).group(1)
    assert re.search(rf"^EXPOSE {port}$", text, re.MULTILINE)
    assert "[text,serve,fast]" in text and "NUMBA_CACHE_DIR" in text  # the compiled fusion, cache writable
    assert re.search(r"^\s+OMP_NUM_THREADS=1 ", text, re.MULTILINE)  # spinning OpenMP workers (docs/ROBUSTNESS.md)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for line in ignore:
        if line.startswith("!") and not line.endswith(".md"):
            assert (ROOT / line[1:].rstrip("/")).exists(), f"{line} names a path that does not exist"
    for copied in re.findall(r"^COPY (?:--chown=\S+ )?(\w[\w./-]*) ", text, re.MULTILINE):
        assert f"!{copied}" in ignore or f"!{copied}/" in ignore, f"{copied} is copied but excluded by dockerignore"


def test_the_api_journal_is_writable_and_kept_where_the_deployments_keep_state():
    text = (DEPLOY / "Dockerfile").read_text()
    journal = Path(re.search(r"RAG_REC_DATA__JOURNAL_PATH=(\S+)", text).group(1))
    assert journal.parent in app_owned_dirs(text), "the non-root user writes it"
    api = yaml.safe_load(COMPOSE.read_text())["services"]["api"]
    volume = next(v for v in api["volumes"] if v.split(":")[1] == str(journal.parent))
    assert volume.split(":")[0] in yaml.safe_load(COMPOSE.read_text())["volumes"], "a named volume outlives the container"
    pod = by_kind("Deployment", "rag-rec-api")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    owner = next(path for path in mounts if str(journal).startswith(path.rstrip("/") + "/"))  # read-only root
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts[owner])  # survives container restarts


def behaviour_cache_dir() -> Path:
    """Where the image keeps trained behaviour networks (behaviour.cache_dir), a folder its user owns."""
    text = (DEPLOY / "Dockerfile").read_text()
    cache_dir = Path(re.search(r"RAG_REC_BEHAVIOUR__CACHE_DIR=(\S+)", text).group(1))
    assert cache_dir in app_owned_dirs(text), "the non-root user writes it"
    return cache_dir


def test_compose_behaviour_profile_trains_before_the_api_into_the_volume_the_api_reads(monkeypatch):
    compose = yaml.safe_load(COMPOSE.read_text())
    services, cache_dir = compose["services"], str(behaviour_cache_dir())
    job, api = services["behaviour"], services["api"]
    assert job["profiles"] == ["behaviour"] and job["command"] == ["rag-rec", "behaviour", "train"]
    assert job["environment"] == api["environment"], "the job trains with the settings the API starts with"
    job_volumes = dict(reversed(v.split(":")[:2]) for v in job["volumes"])
    api_volumes = dict(reversed(v.split(":")[:2]) for v in api["volumes"])
    assert job_volumes[cache_dir] == api_volumes[cache_dir] in compose["volumes"]
    journal = str(Path(re.search(r"RAG_REC_DATA__JOURNAL_PATH=(\S+)", (DEPLOY / "Dockerfile").read_text())
                       .group(1)).parent)
    assert job_volumes[journal] == api_volumes[journal], "a start trains on the API's products: so does the job"
    assert api["depends_on"]["behaviour"] == {"condition": "service_completed_successfully", "required": False}
    env = {k: resolve_compose(str(v)) for k, v in api["environment"].items()}
    assert settings_from(env, monkeypatch).behaviour.serve is False
    monkeypatch.setenv("RAG_REC_BEHAVIOUR__SERVE", "true")  # as the compose file's comment starts it
    env = {k: COMPOSE_VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), str(v))
           for k, v in api["environment"].items()}
    assert settings_from(env, monkeypatch).behaviour.serve is True


def kustomize(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(directory)], check=False, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def claim_mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """mount path -> (the persistent volume claim mounted there, read-only)."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    return {m["mountPath"]: (claims[m["name"]], m.get("readOnly", False)) for m in container["volumeMounts"]
            if m["name"] in claims}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_behaviour_overlay_trains_once_and_every_replica_reads_the_kept_network(monkeypatch):
    docs = kustomize(BEHAVIOUR_OVERLAY)
    assert {d["metadata"]["name"]: k8s_errors(d) for d in docs if k8s_errors(d)} == {}
    found = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(found) == len(k8s_documents()) + 2  # the base, a volume claim and the training Job
    cache_dir = str(behaviour_cache_dir())
    claim = found["PersistentVolumeClaim", "rag-rec-behaviour"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every replica's node mounts it"
    job = found["Job", "rag-rec-behaviour"]["spec"]["template"]["spec"]
    assert job["containers"][0]["command"] == ["rag-rec", "behaviour", "train"]
    assert claim_mounts(job, job["containers"][0]) == {cache_dir: ("rag-rec-behaviour", False)}
    pod = found["Deployment", "rag-rec-api"]["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["command"][:4] == ["rag-rec", "behaviour", "train", "--wait"]
    assert claim_mounts(pod, init) == {cache_dir: ("rag-rec-behaviour", False)}
    api = next(c for c in pod["containers"] if c["name"] == "api")
    assert claim_mounts(pod, api) == {cache_dir: ("rag-rec-behaviour", True)}
    home = {m["mountPath"]: m["name"] for m in api["volumeMounts"]}["/home/app"]
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]}["/home/app"] == home, \
        "the init container reads the pod's ingest journal, whose products a start trains on"
    assert pod["securityContext"]["fsGroup"] == job["securityContext"]["fsGroup"] == 10001
    assert init["envFrom"] == api["envFrom"] == job["containers"][0]["envFrom"]
    env = {**found["ConfigMap", "rag-rec-config"]["data"], **found["Secret", "rag-rec-secrets"]["stringData"]}
    assert settings_from(env, monkeypatch).behaviour.serve is True
    base = {**by_kind("ConfigMap", "rag-rec-config")["data"], **by_kind("Secret", "rag-rec-secrets")["stringData"]}
    assert settings_from(base, monkeypatch).behaviour.serve is False


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_everything_into_the_namespace():
    rendered = kustomize(K8S)
    assert len(rendered) == len(k8s_documents())
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "rag-rec", doc["metadata"]["name"]
        assert k8s_errors(doc) == [], doc["metadata"]["name"]
    images = [c["image"] for d in rendered if d["kind"] in {"Deployment", "Job"}
              for c in d["spec"]["template"]["spec"]["containers"]]
    assert "rag-rec:local" in images


def test_serving_doc_covers_every_route():
    from rag_rec.serve.app import create_app
    from rag_rec.settings import ServeSettings

    doc = (ROOT / "docs" / "SERVING.md").read_text()
    spec = create_app(object(), ServeSettings()).openapi()  # the routes do not touch the service here
    for path, operations in spec["paths"].items():
        for method in operations:
            assert f"{method.upper()} {path}" in doc, f"{method.upper()} {path} is not in docs/SERVING.md"
    for name in ("RAG_REC_INDEX__BACKEND", "RAG_REC_INDEX__URL", "RAG_REC_LLM__BASE_URL", "X-API-Key"):
        assert name in doc
