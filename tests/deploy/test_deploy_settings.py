"""The deploy files read critically, without a Docker engine or a cluster.

Schemas: the Compose Specification's JSON schema (vendored by check-jsonschema) and the
Kubernetes OpenAPI schemas (shipped by kubernetes-validate), both offline. Then what the
schemas cannot know: every setting and flag exists in the daemon, the grace periods leave
the daemon's own shutdown timeout room, the probes wait out the broker connect timeout, the
broker keeps its log in its volume, the password comes from a Secret.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.resources import files

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stream_meta.cli.main import _parser
from stream_meta.daemon.config import RunConfig, load_config
from stream_meta.errors import ConfigError
from tests.deploy.settings import (
    PENDING_FIELDS, ROOT, commented_keys, compose, configmap_text, dockerfile, duration_s, env_settings, k8s,
    k8s_docs, loadable_env, pending_absent, quantity_bytes, setting, used_argv, used_settings,
)

# Kubernetes versions the manifests must be valid for: the oldest still common, the newest known.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
# Peak RSS (VmHWM) measured of `stream-meta run` with torch on one thread: 0.95-1.04 GiB on
# 64-d digits and on 784-d MNIST with a 1000-record replay memory (see the Deployment).
MEASURED_PEAK_RSS = 1.04 * 2**30
SHUTDOWN_MARGIN_S = 10   # between the daemon's exit-3 watchdog and the orchestrator's SIGKILL
STARTUP_ALLOWANCE_S = 60  # importing torch, restoring a checkpoint, opening the HTTP port


# -- schemas ------------------------------------------------------------------------------------
def _compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def test_compose_file_matches_the_compose_specification():
    validator = _compose_validator()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors
    # the schema is strict enough to catch a misspelt key
    typo = {"services": {"x": {"image": "a", "stop_grace_periode": "45s"}}}
    assert list(validator.iter_errors(typo))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version):
    checked = []
    for doc in k8s_docs():
        if doc["kind"] == "PodMonitor":  # a CRD: no schema offline; its fields are checked in test_deploy_files
            continue
        kubernetes_validate.validate(doc, version, strict=True)  # raises on an unknown or mistyped field
        checked.append(doc["kind"])
    assert sorted(checked) == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Secret", "Service"]
    broken = k8s("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["failureTreshold"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


# -- every setting and flag is one the daemon has ------------------------------------------------
def test_every_setting_in_the_deploy_files_is_a_run_config_field():
    used = list(used_settings())
    assert len(used) > 20
    unknown = [(where, name) for where, name in used if name not in RunConfig.model_fields and name not in PENDING_FIELDS]
    assert not unknown, f"settings the daemon does not have: {unknown}"
    pending = sorted({name for _, name in used if pending_absent(name)})
    if pending:  # reported, so the merge that adds them is noticed
        print(f"pending RunConfig fields used by the deploy files (not in this RunConfig yet): {pending}")


@pytest.mark.integration  # runs the real `stream-meta run --help`
def test_every_command_line_parses_and_its_flags_are_in_run_help():
    run_help = subprocess.run([sys.executable, "-m", "stream_meta.cli.main", "run", "--help"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run_help.returncode == 0, run_help.stderr
    for where, argv in used_argv():
        args = _parser().parse_args(argv)  # exits (fails the test) on an unknown flag
        assert args.command in ("run", "produce"), where
        if args.command == "run":
            for flag in (a for a in argv if a.startswith("--")):
                assert re.search(rf"{re.escape(flag)}\b", run_help.stdout), (where, flag)
    # and every setting set by environment or file is a flag of `run --help` too
    for where, name in used_settings():
        if not pending_absent(name):
            assert "--" + name.replace("_", "-") in run_help.stdout, (where, name)


def test_image_entrypoint_is_the_cli_under_an_init_and_no_deploy_file_overrides_it_for_the_daemon():
    # an init as PID 1 passes SIGTERM on; a Python PID 1 ignores it until the daemon's handler
    # is installed (after torch, the checkpoint and the broker): stop would wait for SIGKILL
    (entrypoint,) = re.findall(r"^ENTRYPOINT (\[.*\])$", dockerfile(), re.M)
    assert yaml.safe_load(entrypoint) == ["/usr/bin/tini", "--", "stream-meta"]
    assert re.search(r"apt-get install [^\n]*\btini\b", dockerfile())
    assert "entrypoint" not in compose()["services"]["stream-meta"]
    container = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container and container["args"][0] == "run"


# -- timeouts that must nest -----------------------------------------------------------------
def _compose_daemon_settings() -> dict:
    return env_settings(compose()["services"]["stream-meta"]["environment"])


def test_compose_stop_grace_period_outlasts_the_shutdown_timeout():
    daemon = compose()["services"]["stream-meta"]
    shutdown = setting(_compose_daemon_settings(), "shutdown_timeout_s")
    assert duration_s(daemon["stop_grace_period"]) >= shutdown + SHUTDOWN_MARGIN_S


def test_k8s_termination_grace_period_outlasts_the_shutdown_timeout():
    spec = k8s("Deployment")["spec"]["template"]["spec"]
    shutdown = setting(yaml.safe_load(configmap_text()), "shutdown_timeout_s")
    assert spec["terminationGracePeriodSeconds"] >= shutdown + SHUTDOWN_MARGIN_S


def test_a_slow_broker_at_start_up_is_waited_for_not_restarted():
    # k8s: the startup probe gives up only after the daemon's own connect timeout would have
    connect = setting(yaml.safe_load(configmap_text()), "connect_timeout_s")
    assert connect >= 120, "a broker's rolling restart takes minutes; a short connect timeout loops the pod"
    container = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= connect + STARTUP_ALLOWANCE_S
    assert startup.get("timeoutSeconds", 1) >= 2  # the kubelet's default 1 s is short while torch loads
    for probe in ("livenessProbe", "readinessProbe"):  # guarded by the startup probe, no delays of their own
        assert container[probe].get("initialDelaySeconds", 0) == 0
    # Compose: the healthcheck's start period covers the same wait, and a daemon that gave up is restarted
    daemon = compose()["services"]["stream-meta"]
    connect = setting(_compose_daemon_settings(), "connect_timeout_s")
    assert duration_s(daemon["healthcheck"]["start_period"]) >= connect + STARTUP_ALLOWANCE_S
    assert daemon["restart"] in ("on-failure", "unless-stopped", "always")
    # the image's own HEALTHCHECK, for a plain `docker run` with the default connect timeout
    (start_period,) = re.findall(r"--start-period=(\S+)", dockerfile())
    assert duration_s(start_period) >= setting({}, "connect_timeout_s") + STARTUP_ALLOWANCE_S


# -- the broker, secrets, resources, privileges ---------------------------------------------------
def test_compose_kafka_keeps_its_log_in_its_volume():
    kafka = compose()["services"]["kafka"]
    mounts = [v.split(":")[1] for v in kafka["volumes"]]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"].split(",")
    assert all(any(d == m or d.startswith(m.rstrip("/") + "/") for m in mounts) for d in log_dirs), (log_dirs, mounts)
    assert kafka["environment"]["CLUSTER_ID"]  # fixed: the formatted volume records it


def test_k8s_sasl_password_comes_from_the_secret():
    container = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    (password,) = [e for e in container["env"] if e["name"] == "STREAM_META_SASL_PASSWORD"]
    assert "value" not in password
    ref = password["valueFrom"]["secretKeyRef"]
    secret = k8s("Secret")
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}
    # no password anywhere in plain text: not in the ConfigMap, not in a literal env value
    assert "sasl_password" not in yaml.safe_load(configmap_text())
    assert "sasl_password" not in commented_keys(configmap_text())
    assert not [e for e in container["env"] if "PASSWORD" in e["name"] and "value" in e]
    assert not [k for k in compose()["services"]["stream-meta"]["environment"] if "PASSWORD" in k]


def _service_link_env(service: dict) -> dict[str, str]:
    """The variables the kubelet injects for a Service unless enableServiceLinks is false."""
    name = service["metadata"]["name"].upper().replace("-", "_")
    env = {f"{name}_SERVICE_HOST": "10.0.0.7", f"{name}_SERVICE_PORT": str(service["spec"]["ports"][0]["port"])}
    for p in service["spec"]["ports"]:
        proto, port = p.get("protocol", "TCP"), p["port"]
        env[f"{name}_PORT"] = f"{proto.lower()}://10.0.0.7:{port}"
        env[f"{name}_SERVICE_PORT_{p['name'].upper()}"] = str(port)
        env[f"{name}_PORT_{port}_{proto}"] = f"{proto.lower()}://10.0.0.7:{port}"
        env[f"{name}_PORT_{port}_{proto}_PORT"] = str(port)
    return env


def test_k8s_service_links_cannot_reach_the_config_loader(tmp_path):
    spec = k8s("Deployment")["spec"]["template"]["spec"]
    links = _service_link_env(k8s("Service"))
    assert "STREAM_META_SERVICE_HOST" in links  # the Service is called stream-meta: its variables look like settings
    try:
        load_config({}, env=loadable_env(links))
        tolerated = True
    except ConfigError:
        tolerated = False
    assert tolerated or spec.get("enableServiceLinks") is False, "the pod would exit 2 on every start"


def test_k8s_memory_fits_the_measured_peak_and_cpu_one_torch_thread():
    container = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert quantity_bytes(requests["memory"]) >= MEASURED_PEAK_RSS
    assert quantity_bytes(limits["memory"]) >= 1.5 * MEASURED_PEAK_RSS
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert float(requests["cpu"]) >= float(env["STREAM_META_TORCH_THREADS"])


def test_daemon_containers_drop_privileges():
    for name in ("stream-meta", "producer"):
        svc = compose()["services"][name]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
    spec = k8s("Deployment")["spec"]["template"]["spec"]
    sc = spec["containers"][0]["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


def test_compose_shell_entrypoints_run_under_an_init():
    shells = [name for name, svc in compose()["services"].items()
              if svc.get("entrypoint", [""])[0] in ("/bin/sh", "/bin/bash")]
    assert shells == ["topics", "producer"]
    assert all(compose()["services"][name].get("init") is True for name in shells)
