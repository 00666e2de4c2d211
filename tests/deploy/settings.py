"""The daemon settings that the deploy files set, read without Docker or a cluster.

Every place a setting can hide: the image's ``ENV`` and ``CMD``, the Compose service's
``environment`` and ``command``, the Deployment's ``env`` and ``args``, the ConfigMap's
``config.yaml`` (including its commented-out examples, which a user uncomments as they are).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from stream_meta.daemon.config import ENV_PREFIX, RunConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# RunConfig fields the deploy files may set before the daemon has them (none now: every
# setting they use exists and is checked like every other field).
PENDING_FIELDS: frozenset[str] = frozenset()
# What the daemon uses when a pending field is not set (issue #10: "default 60").
PENDING_DEFAULTS = {"connect_timeout_s": 60.0}


def pending_absent(name: str) -> bool:
    return name in PENDING_FIELDS and name not in RunConfig.model_fields


def loadable_env(env: Mapping[str, Any]) -> dict[str, str]:
    """``env`` as strings, less the pending settings this RunConfig does not have yet."""
    return {k: str(v) for k, v in env.items() if not pending_absent(k[len(ENV_PREFIX):].lower())}


def loadable_config(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not pending_absent(k)}


def setting(raw: Mapping[str, Any], name: str) -> float:
    """A numeric setting as the daemon would see it: ``raw`` (file/env values), else the default."""
    if name in raw:
        return float(raw[name])
    if name in RunConfig.model_fields:
        return float(RunConfig.model_fields[name].default)
    return PENDING_DEFAULTS[name]


def env_settings(env: Mapping[str, Any]) -> dict[str, Any]:
    """``STREAM_META_X=v`` -> ``{"x": v}`` (``STREAM_META_CONFIG`` is the file, not a field)."""
    return {k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
            if k.startswith(ENV_PREFIX) and k != ENV_PREFIX + "CONFIG"}


def duration_s(text: str | int | float) -> float:
    """A Compose/Docker duration (``45s``, ``1m30s``, ``500ms``) in seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s|us|ns)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * scale[u] for n, u in parts)


def quantity_bytes(text: str) -> float:
    """A Kubernetes memory quantity (``1536Mi``, ``2Gi``, ``1G``) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    assert m, f"not a memory quantity: {text!r}"
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    return float(m.group(1)) * scale[m.group(2)]


# -- where the settings are -------------------------------------------------------------------
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def dockerfile_env() -> dict[str, str]:
    return dict(re.findall(rf"\b({ENV_PREFIX}\w+)=(\S+)", dockerfile()))


def dockerfile_cmd() -> list[str]:
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile(), re.M)
    return yaml.safe_load(cmd)


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def kustomization() -> dict:
    return yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())


def generated_files() -> list[str]:
    """Files of deploy/k8s that the Kustomization turns into ConfigMaps (not manifests)."""
    return [f for gen in kustomization().get("configMapGenerator", []) for f in gen["files"]]


def k8s_docs() -> list[dict]:
    """What ``kubectl kustomize deploy/k8s`` renders, less name hashes and common labels:
    the listed resources and the generated ConfigMaps (kubectl is not needed to check them)."""
    k = kustomization()
    docs = [doc for name in k["resources"] for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if doc]
    for gen in k.get("configMapGenerator", []):
        data = {Path(f).name: (DEPLOY / "k8s" / f).read_text() for f in gen["files"]}
        labels = gen.get("options", {}).get("labels", {})
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"], "labels": labels},
                     "data": data})
    return docs


def k8s(kind: str) -> dict:
    (doc,) = [d for d in k8s_docs() if d["kind"] == kind]
    return doc


def configmap_text() -> str:
    return k8s("ConfigMap")["data"]["config.yaml"]


def commented_keys(config_text: str) -> list[str]:
    """``# key: value`` example lines of a config file (prose comments have spaces before the colon)."""
    return re.findall(r"^\s*#\s*([a-z_]+):\s*\S", config_text, re.M)


def used_settings() -> Iterator[tuple[str, str]]:
    """(where, RunConfig field name) for every daemon setting any deploy file sets."""
    for key in dockerfile_env():
        yield "Dockerfile ENV", key[len(ENV_PREFIX):].lower()
    services = compose()["services"]
    for key in env_settings(services["stream-meta"].get("environment", {})):
        yield "compose environment", key
    container = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    for key in env_settings({e["name"]: e.get("value") for e in container["env"]}):
        yield "Deployment env", key
    text = configmap_text()
    for key in yaml.safe_load(text):
        yield "ConfigMap config.yaml", key
    for key in commented_keys(text):
        yield "ConfigMap config.yaml (commented example)", key


def used_argv() -> Iterator[tuple[str, list[str]]]:
    """(where, argv after ``stream-meta``) for every daemon command line in the deploy files."""
    yield "Dockerfile CMD", dockerfile_cmd()
    services = compose()["services"]
    yield "compose stream-meta command", services["stream-meta"]["command"]
    line = next(ln for ln in services["producer"]["command"][0].splitlines() if "stream-meta produce" in ln)
    yield "compose producer command", shlex.split(line.replace("$$i", "0"))[1:]
    container = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    yield "Deployment args", container["args"]
