"""deploy/k8s and deploy/Dockerfile: parsed and cross-checked, since CI has no cluster.

What a cluster would refuse or misroute at apply time, or a sidecar at start, is checked here
instead: every Secret, ConfigMap and key a pod refers to exists; every port a Service, a peer
address or a service address names is a container port where it leads; every role of the
checkout choreography has one sidecar; every variable a container is given is one the code
reads (the lists come from the code, not from this file); and each sidecar's environment,
resolved as the kubelet would, builds a valid ``SidecarConfig``.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (the test extra) parses the manifests")
pytest.importorskip("grpc", reason="the demo's code (roles, addresses) needs gRPC: the test extra has it")

import typer.main  # noqa: E402

from accompanist.cli import app as cli_app  # noqa: E402
from accompanist.demo.checkout import app as checkout_app  # noqa: E402
from accompanist.demo.clients import address_env  # noqa: E402
from accompanist.demo.services import SERVICES  # noqa: E402
from accompanist.demo.services.frontend import SIDECAR_ENV, SIDECAR_TOKEN_ENV  # noqa: E402
from accompanist.language.choreography import App  # noqa: E402
from accompanist.sidecar.config import SidecarConfig, known_keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BY_HAND = {"secret.example.yaml"}  # the Secret's shape: the README creates the real one
LOOPBACK = "127.0.0.1"
WORKLOADS = ("StatefulSet", "Deployment", "Job")


def load_all() -> dict[str, list[dict[str, Any]]]:
    """Every YAML file under deploy/k8s, by its path relative to it."""
    return {
        str(p.relative_to(K8S)): [d for d in yaml.safe_load_all(p.read_text()) if d]
        for p in sorted(K8S.rglob("*.yaml"))
    }


DOCS = load_all()
KUSTOMIZATIONS = {name: docs[0] for name, docs in DOCS.items() if Path(name).name == "kustomization.yaml"}
OBJECTS = [d for name, docs in DOCS.items() if name not in KUSTOMIZATIONS for d in docs]


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == kind}


def pods() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(workload name, pod template)`` of every workload."""
    for kind in WORKLOADS:
        for name, obj in objects(kind).items():
            yield name, obj["spec"]["template"]


def container_ports(pod: dict[str, Any]) -> dict[str | int, int]:
    """A pod's container ports, by name and by number."""
    found: dict[str | int, int] = {}
    for c in pod["spec"]["containers"]:
        for p in c.get("ports", []):
            found[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                found[p["name"]] = p["containerPort"]
    return found


def selected(selector: dict[str, str]) -> list[dict[str, Any]]:
    return [pod for _, pod in pods() if selector.items() <= pod["metadata"]["labels"].items()]


def resolve(pod_env: list[dict[str, Any]], env_from: list[dict[str, Any]]) -> dict[str, str]:
    """A container's environment as the kubelet builds it (Secrets' values from the example)."""
    env: dict[str, str] = {}
    for source in env_from:
        env.update(objects("ConfigMap")[source["configMapRef"]["name"]]["data"])
    for var in pod_env:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = objects("Secret")[ref["name"]]["stringData"][ref["key"]]
    return env


def sidecar_variables() -> set[str]:
    """Every variable ``accompanist sidecar`` reads: its options' and every config key's."""
    command = typer.main.get_command(cli_app).commands["sidecar"]  # type: ignore[attr-defined]
    options = {p.envvar for p in command.params if isinstance(p.envvar, str)}
    return options | {f"ACCOMPANIST_{k.upper()}" for k in known_keys()}


def test_the_committed_manifests_are_what_the_generator_writes() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-k8s"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_the_kustomizations_list_every_manifest_but_the_secret_and_set_one_image() -> None:
    listed = set()
    for name, kustomization in KUSTOMIZATIONS.items():
        here = Path(name).parent
        for resource in kustomization["resources"]:
            assert (K8S / here / resource).is_file(), (name, resource)
            listed.add(str(here / resource))
        assert kustomization["namespace"] == "boutique"
    assert listed | BY_HAND | set(KUSTOMIZATIONS) == set(DOCS)
    images = [k["images"] for k in KUSTOMIZATIONS.values()]
    assert all(i == images[0] for i in images), "every kustomization must point at the same image"
    assert {i["name"] for i in images[0]} == {c["image"] for _, pod in pods() for c in pod["spec"]["containers"]}


def test_every_secret_and_config_map_a_pod_refers_to_exists_with_its_keys() -> None:
    refs = 0
    for _, pod in pods():
        for c in pod["spec"]["containers"]:
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in objects("ConfigMap")
                refs += 1
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] in objects("Secret"), ref
                    assert ref["key"] in objects("Secret")[ref["name"]]["stringData"], ref
                    refs += 1
    assert refs >= 2 * len(checkout_app.get("checkout").roles)


def test_every_service_port_leads_to_a_container_port_of_a_pod_it_selects() -> None:
    for name, svc in objects("Service").items():
        targets = selected(svc["spec"]["selector"])
        assert targets, f"Service {name} selects no pod"
        for port in svc["spec"]["ports"]:
            for pod in targets:
                assert port["targetPort"] in container_ports(pod), (name, port)


def _check_address(address: str, pod: dict[str, Any], what: str) -> None:
    host, _, port = address.rpartition(":")
    if host == LOOPBACK:  # in the pod's own network namespace
        assert int(port) in container_ports(pod), what
        return
    svc = objects("Service").get(host)
    assert svc is not None, f"{what}: no Service {host!r}"
    (entry,) = [p for p in svc["spec"]["ports"] if p["port"] == int(port)] or [None]
    assert entry is not None, f"{what}: Service {host} has no port {port}"
    assert all(entry["targetPort"] in container_ports(p) for p in selected(svc["spec"]["selector"])), what


def test_every_peer_service_and_sidecar_address_leads_to_a_listening_port() -> None:
    checked = 0
    for name, pod in pods():
        for c in pod["spec"]["containers"]:
            env = resolve(c.get("env", []), c.get("envFrom", []))
            for key, value in env.items():
                if key == "ACCOMPANIST_PEERS":
                    for item in value.split():
                        role, _, address = item.partition("=")
                        _check_address(address, pod, f"{name}: peer {role}")
                        checked += 1
                elif key.startswith("BOUTIQUE_") and key.endswith("_ADDR"):
                    _check_address(value, pod, f"{name}: {key}")
                    checked += 1
                elif key == SIDECAR_ENV:
                    _check_address(re.sub(r"^https?://", "", value), pod, f"{name}: {key}")
                    checked += 1
    roles = len(checkout_app.get("checkout").roles)
    assert checked >= roles * (roles - 1)


def test_every_role_of_the_checkout_has_one_sidecar_beside_its_service() -> None:
    choreography = checkout_app.get("checkout")
    sidecars: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, pod in pods():
        for c in pod["spec"]["containers"]:
            env = resolve(c.get("env", []), c.get("envFrom", []))
            if "ACCOMPANIST_ROLE" in env:
                assert env["ACCOMPANIST_ROLE"] not in sidecars, "two sidecars of one role"
                sidecars[env["ACCOMPANIST_ROLE"]] = (name, pod)
    assert set(sidecars) == {r.name for r in choreography.roles}
    for role, (name, pod) in sidecars.items():
        workload = objects("StatefulSet")[name]
        assert workload["spec"]["replicas"] == 1, "a sidecar's store is its own: one replica per role"
        service = next(c for c in pod["spec"]["containers"] if c["name"] == "service")
        assert service["command"][:4] == ["python", "-m", "accompanist.demo.services", role]
        assert role in SERVICES


def test_every_variable_a_container_gets_is_one_the_code_reads() -> None:
    accepted = sidecar_variables()
    boutique = {address_env(s) for s in SERVICES} | {SIDECAR_ENV, SIDECAR_TOKEN_ENV}
    for name, pod in pods():
        for c in pod["spec"]["containers"]:
            for key in resolve(c.get("env", []), c.get("envFrom", [])):
                if key.startswith("ACCOMPANIST_"):
                    assert key in accepted, f"{name}/{c['name']}: {key} is read by nothing"
                else:
                    assert key in boutique, f"{name}/{c['name']}: {key} is read by nothing"
    # the sanity of the derivation itself: a few we know, none invented
    assert {"ACCOMPANIST_PEERS", "ACCOMPANIST_HMAC_KEY", "ACCOMPANIST_LOG_FORMAT"} <= accepted
    assert "ACCOMPANIST_NO_SUCH_SETTING" not in accepted


def test_each_sidecar_environment_builds_a_valid_fault_tolerant_config(monkeypatch: pytest.MonkeyPatch) -> None:
    built = 0
    for _, pod in pods():
        for c in pod["spec"]["containers"]:
            env = resolve(c.get("env", []), c.get("envFrom", []))
            if "ACCOMPANIST_ROLE" not in env:
                continue
            cli_only = {"ACCOMPANIST_LOG_FORMAT", "ACCOMPANIST_LOG_LEVEL", "ACCOMPANIST_CONFIG"}
            config = SidecarConfig.load(env={k: v for k, v in env.items() if k not in cli_only})
            assert config.engine.mode.value == "fault-tolerant"
            assert config.listen[0] == "0.0.0.0" and config.hmac_key and config.api_token
            assert config.store_url.startswith("sqlite:////data/")
            assert set(config.peers) == {r.name for r in checkout_app.get("checkout").roles} - {config.role}
            module, _, attr = str(config.app).partition(":")
            assert isinstance(getattr(importlib.import_module(module), attr), App)
            built += 1
    assert built == len(checkout_app.get("checkout").roles)


def test_pods_and_the_image_run_as_a_non_root_user() -> None:
    for name, pod in pods():
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, name
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"pip install .*\[demo", dockerfile)
    uid = int(users[-1])
    assert all(pod["spec"]["securityContext"]["runAsUser"] == uid for _, pod in pods())


def test_the_readme_creates_the_secret_the_pods_refer_to() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Running on Kubernetes", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"kubectl -n boutique create secret generic (\S+)((?:.*\\\n)*.*)", section)
    assert command is not None, "the README's Kubernetes steps do not create the Secret"
    keys = set(re.findall(r"--from-literal=([\w-]+)=", command.group(2)))
    (secret,) = objects("Secret").values()
    assert command.group(1) == secret["metadata"]["name"]
    assert keys == set(secret["stringData"])


def test_kustomize_builds_them_into_the_namespace_with_the_image() -> None:
    import shutil

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the other tests check the files themselves)")
    built = []
    for name, kustomization in KUSTOMIZATIONS.items():
        where = K8S / Path(name).parent
        proc = subprocess.run([kubectl, "kustomize", str(where)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        (image,) = kustomization["images"]
        for obj in (d for d in yaml.safe_load_all(proc.stdout) if d):
            built.append(obj)
            if obj["kind"] != "Namespace":
                assert obj["metadata"]["namespace"] == kustomization["namespace"], obj["metadata"]
            for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                assert c["image"] == f"{image['newName']}:{image['newTag']}"
    assert len(built) == len(OBJECTS) - len([d for n in BY_HAND for d in DOCS[n]])


def test_every_volume_a_container_mounts_is_declared() -> None:
    for kind in WORKLOADS:
        for name, obj in objects(kind).items():
            pod = obj["spec"]["template"]["spec"]
            declared = {v["name"] for v in pod.get("volumes", [])}
            declared |= {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
            for c in pod["containers"]:
                for mount in c.get("volumeMounts", []):
                    assert mount["name"] in declared, f"{name}/{c['name']} mounts {mount['name']}"
