"""The files under deploy/ (and the Dockerfile) against promtool, the daemon's real metrics and its real CLI."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
import yaml

from stream_meta.cli.main import _parser
from stream_meta.daemon.config import RunConfig, load_config
from tests.deploy.conftest import DEPLOY, ROOT, tool
from tests.deploy.promql import SCALEOUT, SYNTHETIC, alert_exprs, dashboard_exprs, exported, metric_names
from tests.deploy.settings import generated_files, k8s_docs, loadable_config, loadable_env

PROM = DEPLOY / "prometheus"
METRICS_PORT = RunConfig.model_fields["metrics_port"].default


def _yaml(path):
    return yaml.safe_load(path.read_text())


def _docs(path):
    return list(yaml.safe_load_all(path.read_text()))


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=PROM)


@pytest.mark.parametrize("args", [
    ("check", "config", "prometheus.yml"),
    ("check", "config", "prometheus.scaleout.yml"),
    ("check", "rules", "alerts.yml"),
    ("test", "rules", "alerts.test.yml"),
], ids=" ".join)
def test_promtool(args):
    result = _promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_unit_test():
    alerts = {name for name, _ in alert_exprs(_yaml(PROM / "alerts.yml"))}
    tested = {t["alertname"] for case in _yaml(PROM / "alerts.test.yml")["tests"] for t in case["alert_rule_test"]
              if t["exp_alerts"]}
    assert alerts == tested


# -- every expression names a metric the daemon exports (from a live scrape) --------------------
def _exported_names(live_stack) -> set[str]:
    # a lone daemon does not export the scale-out families; their names come from the real SyncMetrics
    return {name for samples in exported(live_stack.scrape).values() for name in samples} | SYNTHETIC | SCALEOUT


@pytest.mark.integration  # live_stack: a broker, the daemon and Prometheus
def test_dashboard_and_alerts_name_only_exported_metrics(live_stack):
    names = _exported_names(live_stack)
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "stream-meta.json").read_text())
    exprs = dashboard_exprs(dashboard) + alert_exprs(_yaml(PROM / "alerts.yml"))
    assert len(exprs) > 30
    unknown = {(where, m) for where, expr in exprs for m in metric_names(expr) if m not in names}
    assert not unknown, f"expressions name metrics the daemon does not export: {sorted(unknown)}"


@pytest.mark.integration  # live_stack: a broker, the daemon and Prometheus
def test_dashboard_has_a_panel_for_every_catalogue_metric(live_stack):
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "stream-meta.json").read_text())
    used = {m for _, expr in dashboard_exprs(dashboard) for m in metric_names(expr)}
    families = {f: samples for f, samples in exported(live_stack.scrape).items() if f.startswith("stream_meta_")}
    assert len(families) >= 25
    missing = sorted(f for f, samples in families.items() if not samples & used)
    assert not missing, f"no dashboard panel for {missing}"


@pytest.mark.integration  # live_stack: a broker, the daemon and Prometheus
def test_readme_catalogue_documents_every_exported_metric(live_stack):
    readme = (ROOT / "README.md").read_text()
    doc = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(stream_meta_\w+)", doc))
    families = {f: samples for f, samples in exported(live_stack.scrape).items() if f.startswith("stream_meta_")}
    missing = sorted(f for f, samples in families.items() if not ({f} | samples) & documented)
    assert not missing, f"README.md's Metrics table lacks {missing}"
    exported_names = {n for samples in families.values() for n in samples} | set(families)
    assert not documented - exported_names, f"documented but not exported: {documented - exported_names}"


def test_grafana_provisioning_points_at_the_dashboard_and_datasource():
    ds = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "stream-meta.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {ds[0]["uid"]} and ds[0]["url"] == "http://prometheus:9090"
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "stream-meta.yml")["providers"][0]
    compose = _yaml(DEPLOY / "docker-compose.yml")
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Is it learning?", "Is it adapting?", "Is it forgetting?", "Is it keeping up?", "Is it healthy?",
                    "Is the group in step?"]


# -- docker compose -----------------------------------------------------------------------------
def test_compose_runs_kafka_kraft_producer_daemon_prometheus_grafana_with_healthchecks():
    compose = _yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"kafka", "topics", "producer", "stream-meta", "prometheus", "grafana"}
    for name, svc in services.items():
        assert "test" in svc.get("healthcheck", {}), f"{name} has no healthcheck"
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "kafka:9092" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]

    daemon = services["stream-meta"]
    assert daemon["build"]["context"] == ".." and daemon["build"]["dockerfile"] == "Dockerfile"
    assert (DEPLOY / daemon["build"]["context"] / daemon["build"]["dockerfile"]).is_file()
    args = _parser().parse_args(daemon["command"])
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    cfg = load_config(flags, env=loadable_env(daemon["environment"]))  # the real validation
    assert args.command == "run" and cfg.bootstrap == "kafka:9092" and cfg.metrics_host == "0.0.0.0"
    assert f"{cfg.metrics_port}:{cfg.metrics_port}" in daemon["ports"]
    assert f"{cfg.metrics_port}/healthz" in " ".join(daemon["healthcheck"]["test"])
    assert any(v.endswith(f":{cfg.checkpoint_dir}") for v in daemon["volumes"])
    assert daemon["read_only"] is True
    topics = " ".join(services["topics"]["command"])
    assert all(f"{t}:" in topics for t in (cfg.topic, cfg.dlq_topic, "stream-meta.predictions"))

    # the producer's command is a real `stream-meta produce` invocation on the daemon's topic
    line = next(ln for ln in services["producer"]["command"][0].splitlines() if "stream-meta produce" in ln)
    argv = shlex.split(line.replace("$$i", "0"))[1:]
    produce = _parser().parse_args(argv)
    assert produce.topic == cfg.topic and produce.bootstrap == cfg.bootstrap
    # the daemon's image is core-only; the producer's adds the [data] extra its data set needs
    assert "args" not in daemon["build"] and services["producer"]["build"]["args"] == {"EXTRAS": "[data]"}
    assert services["producer"]["image"] != daemon["image"]

    # Prometheus scrapes the daemon's service name and port, with the rule files mounted
    prom = _yaml(PROM / "prometheus.yml")
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "stream-meta")
    assert job["static_configs"][0]["targets"] == [f"stream-meta:{cfg.metrics_port}"]
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert all((PROM / f).is_file() for f in prom["rule_files"])


# -- kubernetes ---------------------------------------------------------------------------------
def _k8s() -> dict[str, dict]:
    out = {doc["kind"]: doc for doc in k8s_docs()}
    assert len(out) == len(k8s_docs()), "one object of each kind"
    return out


def _manifest_files() -> list[str]:
    generated = set(generated_files())
    return sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml"
                  and p.name not in generated)


def test_k8s_deployment_probes_security_resources_and_checkpoint_volume(tmp_path):
    k = _k8s()
    assert set(k) == {"ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service", "PodMonitor"}
    kustomization = _yaml(DEPLOY / "k8s" / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == _manifest_files()
    spec = k["Deployment"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"].split(":")[0] == "stream-meta" == kustomization["images"][0]["name"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    port = next(p for p in c["ports"] if p["name"] == "metrics")["containerPort"]
    assert port == int(env["STREAM_META_METRICS_PORT"]) == METRICS_PORT
    assert env["STREAM_META_METRICS_HOST"] == "0.0.0.0"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    ckpt = volumes[mounts[env["STREAM_META_CHECKPOINT_DIR"]]]
    assert ckpt["persistentVolumeClaim"]["claimName"] == k["PersistentVolumeClaim"]["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]]  # the only other writable place
    config_dir = env["STREAM_META_CONFIG"].rsplit("/", 1)[0]
    assert volumes[mounts[config_dir]]["configMap"]["name"] == k["ConfigMap"]["metadata"]["name"]
    assert k["Deployment"]["spec"]["replicas"] == 1 and k["Deployment"]["spec"]["strategy"]["type"] == "Recreate"

    # the ConfigMap's settings load through the real config loader, with the Deployment's env on top
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(loadable_config(yaml.safe_load(k["ConfigMap"]["data"]["config.yaml"]))))
    cfg = load_config({}, env=loadable_env({**env, "STREAM_META_CONFIG": str(tmp_path / "config.yaml")}))
    assert cfg.metrics_port == port and str(cfg.checkpoint_dir) == env["STREAM_META_CHECKPOINT_DIR"]

    service, monitor = k["Service"]["spec"], k["PodMonitor"]["spec"]
    assert service["ports"][0]["targetPort"] == "metrics" and service["ports"][0]["port"] == port
    labels = k["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["podMetricsEndpoints"][0]["port"] == "metrics"
    assert labels[monitor["jobLabel"]] == "stream-meta"  # job="stream-meta", as the alerts expect


def test_k8s_kustomization_lists_every_manifest_and_sets_the_image():
    # Checked without kubectl (not something this repo installs): what `kubectl kustomize`
    # would read is every listed file, each parsing, covering every manifest in the folder,
    # and the settings file it turns into the ConfigMap the Deployment mounts.
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert sorted(listed) == _manifest_files()
    kinds = [doc["kind"] for name in listed for doc in _docs(DEPLOY / "k8s" / name) if doc]
    assert sorted(kinds + ["ConfigMap"]) == sorted(_k8s())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["config.yaml"] and isinstance(_yaml(DEPLOY / "k8s" / "config.yaml"), dict)
    deployment = _k8s()["Deployment"]
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert any(i.split(":")[0] == "stream-meta" for i in images)
    assert {i["name"] for i in kustomization["images"]} == {"stream-meta"}


# -- Dockerfile ---------------------------------------------------------------------------------
def test_dockerfile_is_multistage_cpu_torch_non_root_with_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.M)
    assert len(stages) >= 2 and "COPY --from=build" in text
    assert "download.pytorch.org/whl/cpu" in text
    # the daemon only by default: no extra, no torchvision (a [bench] dependency)
    assert re.search(r'^ARG EXTRAS=""$', text, re.M) and 'pip install ".${EXTRAS}"' in text
    assert "torchvision" not in text
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \[.*"stream-meta"\]$', text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*healthz", text, re.M)
    assert f"EXPOSE {METRICS_PORT}" in text
    # every file the build copies exists and is not excluded by .dockerignore
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")}
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists() and src not in ignored, src
