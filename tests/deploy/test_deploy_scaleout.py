"""The scale-out deploy files (issue #15): Compose override with two members, the StatefulSet
overlay with the rendezvous wired. Read offline like the base files."""

from __future__ import annotations

import json
from importlib.resources import files

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stream_meta.daemon.config import RunConfig, load_config
from stream_meta.daemon.sync_config import settings_from_env
from tests.deploy.settings import DEPLOY, env_settings

K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
OVERLAY = DEPLOY / "k8s-scaleout"


def _override() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.scaleout.yml").read_text())


def _members() -> dict[str, dict]:
    """The two members' environments as Compose would merge them (override over base)."""
    base = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    over = _override()["services"]
    return {"stream-meta": {**base["stream-meta"]["environment"], **over["stream-meta"]["environment"]},
            "stream-meta-1": over["stream-meta-1"]["environment"]}


def test_compose_override_matches_the_specification_and_runs_two_ranked_members():
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert not [e.message for e in validator.iter_errors(_override())]
    members = _members()
    ranks = []
    for name, env in members.items():
        env = {k: str(v) for k, v in env.items()}
        assert env["MASTER_ADDR"] == "stream-meta"  # member 0's service name
        group = settings_from_env(env, 10, None, 30.0)
        assert group is not None and group.world_size == len(members)
        ranks.append(group.rank)
        unknown = [k for k in env_settings(env) if k not in RunConfig.model_fields]
        assert not unknown, f"{name}: settings the daemon does not have: {unknown}"
        cfg = load_config({}, env=env)
        assert cfg.group == "stream-meta" and cfg.sync_every == 10  # one consumer group, one sync cadence
    assert sorted(ranks) == [0, 1]
    over = _override()
    assert over["services"]["stream-meta-1"]["volumes"][0].startswith("checkpoints-1:")  # its own checkpoints


def _overlay_docs() -> dict[str, dict]:
    k = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    docs = [yaml.safe_load((OVERLAY / name).read_text()) for name in k["resources"] if name.endswith(".yaml")]
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_statefulset_overlay_matches_the_kubernetes_schemas(version):
    docs = _overlay_docs()
    assert set(docs) == {"StatefulSet", "Service"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_statefulset_wires_the_rendezvous_ordinal_as_rank_and_a_volume_per_member():
    docs = _overlay_docs()
    sts, svc = docs["StatefulSet"], docs["Service"]
    spec = sts["spec"]
    assert spec["serviceName"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    (c,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    rank_from = next(e for e in c["env"] if e["name"] == "RANK")["valueFrom"]["fieldRef"]["fieldPath"]
    assert rank_from == "metadata.name"  # the pod name stream-meta-<ordinal>
    assert int(env["WORLD_SIZE"]) == spec["replicas"]
    assert env["MASTER_ADDR"] == f"{sts['metadata']['name']}-0.{svc['metadata']['name']}"
    port = next(p for p in c["ports"] if p["name"] == "rendezvous")["containerPort"]
    assert port == int(env["MASTER_PORT"]) == svc["spec"]["ports"][0]["port"]
    for ordinal in range(spec["replicas"]):  # what each pod's environment gives the daemon
        pod_env = {**{k: v for k, v in env.items() if v is not None}, "RANK": f"{sts['metadata']['name']}-{ordinal}"}
        assert settings_from_env(pod_env, 10, None, 30.0).rank == ordinal
    settings = {k: v for k, v in env.items() if k.startswith("STREAM_META_") and v is not None}
    assert not [k for k in env_settings(settings) if k not in RunConfig.model_fields]
    load_config({}, env={k: v for k, v in settings.items() if k != "STREAM_META_CONFIG"})
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    (claim,) = spec["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == env["STREAM_META_CHECKPOINT_DIR"]
    volumes = {v["name"] for v in spec["template"]["spec"]["volumes"]}
    assert claim["metadata"]["name"] not in volumes  # per member, not the base's shared claim


def test_compose_prometheus_scrapes_both_members_with_the_base_job_alerts_and_flags():
    base = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["prometheus"]
    over = _override()["services"]["prometheus"]
    config_flag = next(a for a in over["command"] if a.startswith("--config.file="))
    mount = next(v for v in base["volumes"] if v.startswith("./prometheus:")).split(":")[1]
    path = config_flag.split("=", 1)[1]
    assert path.startswith(mount + "/")
    cfg = yaml.safe_load((DEPLOY / "prometheus" / path[len(mount) + 1:]).read_text())
    base_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert cfg["global"] == base_cfg["global"] and cfg["rule_files"] == base_cfg["rule_files"]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "stream-meta"]  # the job the alerts select
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    port = {name: load_config({}, env={k: str(v) for k, v in env.items()}).metrics_port
            for name, env in _members().items()}
    assert sorted(targets) == sorted(f"{name}:{p}" for name, p in port.items())  # every member, its metrics port
    keep = lambda cmd: sorted(a for a in cmd if not a.startswith("--config.file="))
    assert keep(over["command"]) == keep(base["command"])  # storage, retention, lifecycle as in the base
    assert "stream-meta-1" in over["depends_on"]
