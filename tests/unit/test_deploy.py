"""The local stack and cluster manifests agree with the code: there is no Docker engine here, so
every file, port, environment variable and command they reference is checked against the repo."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from muxrec.cli import build_parser, cmd_serve
from muxrec.services.app import build_app, load_serve_config, make_settings
from muxrec.services.deps import make_cache
from muxrec.services.metrics import CacheCollector, GatewayMetrics
from muxrec.services.settings import ServeSettings

from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SERVE = load_serve_config(REPO / "deploy" / "serve.yaml")
README = (REPO / "README.md").read_text()


def test_compose_has_the_four_services():
    assert set(SERVICES) == {"redis", "muxrec", "prometheus", "grafana"}
    build = SERVICES["muxrec"]["build"]
    assert (REPO / build["context"] / build["dockerfile"]).is_file()


def test_compose_command_is_a_real_cli_invocation_on_the_configured_port():
    command = SERVICES["muxrec"]["command"]
    assert command[0] == "muxrec"
    args = build_parser().parse_args(command[1:])
    assert args.func is cmd_serve and (REPO / args.config).is_file()
    assert load_serve_config(REPO / args.config).port == args.port == 8000
    assert "8000:8000" in SERVICES["muxrec"]["ports"]


def test_compose_environment_is_read_by_the_settings(monkeypatch):
    env = SERVICES["muxrec"]["environment"]
    assert set(env) == {"REDIS_URL", "MUXREC_ADMIN_TOKEN"}
    monkeypatch.setenv("REDIS_URL", env["REDIS_URL"])
    monkeypatch.setenv("MUXREC_ADMIN_TOKEN", "a-real-secret-of-32-characters!!")
    settings = ServeSettings()
    assert settings.redis_url == "redis://redis:6379/0" and settings.admin_token.get_secret_value().startswith("a-real")
    host, port = re.match(r"redis://([^:/]+):(\d+)", env["REDIS_URL"]).groups()
    assert host in SERVICES and port == "6379"  # the compose network name and Redis's own port
    # The compose default (empty) disables admin; a placeholder is refused at start-up.
    monkeypatch.setenv("MUXREC_ADMIN_TOKEN", "")
    assert ServeSettings().admin_token is None
    monkeypatch.setenv("MUXREC_ADMIN_TOKEN", "changeme")
    with pytest.raises(Exception, match="not a placeholder"):
        ServeSettings()


def test_compose_volumes_point_at_files_in_the_repo():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host == "./artifacts":  # the model registry, written by `muxrec train`
                assert ServeSettings().registry == Path("artifacts")
                continue
            assert (REPO / host).exists(), f"{name}: {host} does not exist"


def test_prometheus_scrapes_the_gateway_metrics_route():
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"muxrec:{SERVE.port}"]
    mount = SERVICES["prometheus"]["volumes"][0].split(":")[1]
    assert mount == "/etc/prometheus/prometheus.yml"


def _exported_metric_names() -> set[str]:
    metrics = GatewayMetrics()
    metrics.registry.register(CacheCollector(make_cache(ServeSettings(redis_url="redis://127.0.0.1:1/0"))))
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "info": ["_info"], "gauge": [""]}
    return {family.name + suffix for family in metrics.registry.collect() for suffix in suffixes[family.type]}


def test_grafana_is_provisioned_with_a_dashboard_on_exported_metrics():
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in SERVICES["prometheus"]["ports"]
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/muxrec.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert any(v.endswith(f":{path}:ro") for v in SERVICES["grafana"]["volumes"])
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/muxrec.json").read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("request rate", "latency", "cache hit ratio", "errors"):
        assert wanted in titles
    exported = _exported_metric_names()
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"muxrec_[a-z_]+", t["expr"])}
    assert used and used <= exported, used - exported
    assert {"muxrec_requests_total", "muxrec_request_latency_seconds_bucket", "muxrec_embedding_cache_total"} <= used


def test_dockerfile_runs_the_readme_commands():
    dockerfile = (REPO / "Dockerfile").read_text()
    runs = re.findall(r"^RUN (.+)$", dockerfile, re.M)
    assert "make venv" in runs and "make venv" in README
    cmd = json.loads(re.search(r"^CMD (.+)$", dockerfile, re.M).group(1))
    assert build_parser().parse_args(cmd[1:]).func is cmd_serve
    assert shlex.join(cmd[:4]) in README  # muxrec serve --config deploy/serve.yaml
    for src in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in src.split():
            assert (REPO / path).exists(), path


def test_serve_config_builds_the_application_graph():
    assert set(SERVE.deployments) == {"Gateway", "Ranker", "Embedder", "FeatureSelector"}
    app = build_app(make_settings(SERVE.settings), SERVE.deployments)
    assert app is not None
    ranker = SERVE.deployments["Ranker"]
    for key in ("max_ongoing_requests", "max_queued_requests", "user_config"):
        assert key in ranker
    assert set(ranker["user_config"]) == {"max_batch_size", "batch_wait_timeout_s"}
    with pytest.raises(Exception, match="unknown option"):
        build_app(make_settings(SERVE.settings), {"Ranker": {"replicas": 2}})


def test_kuberay_service_embeds_the_same_serve_config():
    manifest = yaml.safe_load((REPO / "deploy" / "k8s" / "rayservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    local = yaml.safe_load((REPO / "deploy" / "serve.yaml").read_text())
    assert embedded["http_options"]["host"] == "0.0.0.0"
    embedded["http_options"]["host"] = local["http_options"]["host"]
    embedded["applications"][0]["args"]["registry"] = local["applications"][0]["args"]["registry"]
    assert embedded == local
    module, attr = embedded["applications"][0]["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == SERVICES["muxrec"]["image"]
    for group in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert {e["name"] for e in worker["env"]} == set(SERVICES["muxrec"]["environment"])


def test_flags_over_environment_over_the_serve_config(monkeypatch, capsys):
    """`muxrec serve` and `serve run` / KubeRay read the same precedence: flags, environment, file."""
    from muxrec.services.app import app_builder

    for name in ("MUXREC_REGISTRY", "MUXREC_MODEL", "MUXREC_VERSION", "REDIS_URL", "MUXREC_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert make_settings(None, file=SERVE.settings).registry == Path(SERVE.settings["registry"])  # file over default
    monkeypatch.setenv("MUXREC_REGISTRY", "/srv/registry")
    monkeypatch.setenv("MUXREC_VERSION", "v0007")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/1")
    from_env = make_settings(None, file=SERVE.settings)
    assert (from_env.registry, from_env.version, from_env.redis_url) == (Path("/srv/registry"), "v0007",
                                                                           "redis://cache:6379/1")
    assert from_env.model == SERVE.settings["model"]  # not in the environment: the file's value
    args = build_parser().parse_args(["serve", "--registry", "/flag/registry", "--model-version", "v0002"])
    flags = {"registry": str(args.registry), "version": args.model_version}
    from_flags = make_settings(flags, file=SERVE.settings)
    assert (from_flags.registry, from_flags.version) == (Path("/flag/registry"), "v0002")
    assert app_builder(SERVE.settings) is not None  # the import_path builder applies the same rule
    print(f"registry: file {SERVE.settings['registry']!r} < env {str(from_env.registry)!r} "
          f"< flag {str(from_flags.registry)!r}")


@pytest.mark.parametrize("field, value", [("serving_alias", "../outside"), ("serving_alias", ".."),
                                          ("model", "../../etc"), ("version", "a/b")])
def test_names_that_would_leave_the_registry_are_refused(field, value):
    with pytest.raises(Exception, match=field):
        make_settings({field: value})


def _published(ports: list[str]) -> list[tuple[str, str]]:
    """(host address, host port) of each compose port mapping; no address means every interface."""
    out = []
    for mapping in ports:
        parts = str(mapping).split(":")
        out.append((parts[0] if len(parts) == 3 else "0.0.0.0", parts[-2]))
    return out


def test_compose_publishes_only_the_api_on_every_interface():
    exposed = {name: _published(service.get("ports", [])) for name, service in SERVICES.items()}
    print({name: ports for name, ports in exposed.items()})
    assert exposed["redis"] == []  # no password of its own: reachable on the compose network only
    assert exposed["prometheus"] == [("127.0.0.1", "9090")]
    assert exposed["grafana"] == [("127.0.0.1", "3000")]
    assert [a for name, ports in exposed.items() for a, _ in ports if a != "127.0.0.1"] == ["0.0.0.0"]  # the API


def test_grafana_needs_a_login_and_a_real_password():
    env = SERVICES["grafana"]["environment"]
    assert str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    # ${VAR:?message}: compose refuses to start without it (no default password)
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"])


def test_the_app_runs_as_an_unprivileged_user():
    dockerfile = (REPO / "Dockerfile").read_text()
    uid = re.search(r"useradd --uid (\d+)", dockerfile).group(1)
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] == f"{uid}:{uid}" and uid != "0"
    assert dockerfile.index("RUN make venv") < dockerfile.index("USER ")  # build as root, run as the user
    assert SERVICES["muxrec"]["user"] == users[-1]


def test_compose_healthcheck_asks_the_readiness_route():
    from muxrec.services.routes import health

    test = SERVICES["muxrec"]["healthcheck"]["test"]
    url = re.search(r"http://[^']+", " ".join(test)).group(0)
    host, port, path = re.match(r"http://([^:/]+):(\d+)(/\S*)", url).groups()
    assert (host, int(port), path) == ("127.0.0.1", SERVE.port, "/readyz")
    assert path in {route.path for route in health.router.routes}


def test_kuberay_gives_the_token_and_a_writable_registry_to_the_nodes_that_run_replicas():
    manifest = yaml.safe_load((REPO / "deploy" / "k8s" / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    app = embedded["applications"][0]
    head_params = cluster["headGroupSpec"]["rayStartParams"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    # The head takes no replica: it has no CPUs and every deployment asks for some.
    assert head_params["num-cpus"] == "0"
    assert all(d["ray_actor_options"]["num_cpus"] > 0 for d in app["deployments"])
    assert "MUXREC_ADMIN_TOKEN" not in {e["name"] for e in head.get("env", [])}
    # The operator submits the Serve config through the head's dashboard: it must listen on the pod IP.
    assert head_params["dashboard-host"] not in ("127.0.0.1", "localhost")
    registry = app["args"]["registry"]
    for group in cluster["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        token = next(e for e in worker["env"] if e["name"] == "MUXREC_ADMIN_TOKEN")
        assert token["valueFrom"]["secretKeyRef"]["name"] == "muxrec-admin"  # from a Secret, not inline
        mount = next(m for m in worker["volumeMounts"] if m["mountPath"] == registry)
        assert mount.get("readOnly", False) is False  # /v1/admin/reload moves the serving alias there
