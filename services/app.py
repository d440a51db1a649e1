"""Building and running the Serve application.

    app = build_app(ServeSettings(model="ml-100k-deepfm"))          # the graph, wired in one place
    run(load_serve_config("deploy/serve.yaml"))                      # what `muxrec serve` does

deploy/serve.yaml is a Ray Serve config file (the schema of `serve run` / KubeRay's serveConfigV2):
http_options, and per application an import_path (this module's `app_builder`), its `args`
(ServeSettings fields), and per-deployment options (replicas, max_ongoing_requests,
max_queued_requests, backpressure_config, ray_actor_options, user_config with the Ranker's batching knobs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from ray import serve
from ray.serve import Application

from muxrec.errors import ConfigError
from muxrec.services.embedder import Embedder
from muxrec.services.gateway import Gateway
from muxrec.services.ranker import Ranker
from muxrec.services.selector import FeatureSelector
from muxrec.services.settings import ServeSettings

DEPLOYMENTS = {"Gateway": Gateway, "Ranker": Ranker, "Embedder": Embedder, "FeatureSelector": FeatureSelector}
_DEPLOYMENT_OPTIONS = {"num_replicas", "max_ongoing_requests", "max_queued_requests", "backpressure_config",
                       "ray_actor_options", "user_config", "graceful_shutdown_timeout_s", "health_check_period_s",
                       "health_check_timeout_s"}


@dataclass(frozen=True)
class ServeConfig:
    """deploy/serve.yaml, validated: HTTP options, app settings, per-deployment options."""

    host: str = "127.0.0.1"
    port: int = 8000
    request_timeout_s: float | None = None
    app_name: str = "muxrec"
    route_prefix: str = "/"
    settings: dict[str, Any] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)


def make_settings(overrides: dict[str, Any] | None = None, file: dict[str, Any] | None = None) -> ServeSettings:
    """ServeSettings: `overrides` (flags) over the environment over `file` (the Serve config's args) over
    defaults; a bad value is a ConfigError naming the field."""
    try:
        return ServeSettings.from_sources(file, overrides)
    except ValidationError as err:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"serve settings: {details}") from None


def build_app(settings: ServeSettings, deployments: dict[str, dict[str, Any]] | None = None) -> Application:
    """The application graph: the Gateway gets handles to the three model deployments."""
    options = deployments or {}
    unknown = sorted(set(options) - set(DEPLOYMENTS))
    if unknown:
        raise ConfigError(f"serve config: unknown deployment(s) {unknown}; known: {sorted(DEPLOYMENTS)}")

    def configured(name: str):
        opts = options.get(name, {})
        bad = sorted(set(opts) - _DEPLOYMENT_OPTIONS - {"name"})
        if bad:
            raise ConfigError(f"serve config: deployment {name}: unknown option(s) {bad}")
        return DEPLOYMENTS[name].options(**{k: v for k, v in opts.items() if k != "name"})

    ranker = configured("Ranker").bind(settings)
    embedder = configured("Embedder").bind(settings)
    selector = configured("FeatureSelector").bind(settings)
    return configured("Gateway").bind(ranker, embedder, selector, settings)


def app_builder(args: dict[str, Any]) -> Application:
    """import_path target for `serve run deploy/serve.yaml` and KubeRay: args are ServeSettings defaults
    (the environment of the cluster wins over them, as with `muxrec serve`)."""
    return build_app(make_settings(file=args))


def load_serve_config(path: str | Path) -> ServeConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"serve config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {err}") from None
    http = data.get("http_options") or {}
    apps = data.get("applications") or []
    if len(apps) != 1:
        raise ConfigError(f"{path}: expected exactly one application, found {len(apps)}")
    app = apps[0]
    return ServeConfig(
        host=http.get("host", "127.0.0.1"), port=int(http.get("port", 8000)),
        request_timeout_s=http.get("request_timeout_s"), app_name=app.get("name", "muxrec"),
        route_prefix=app.get("route_prefix", "/"), settings=dict(app.get("args") or {}),
        deployments={d["name"]: d for d in app.get("deployments") or []},
    )


def start(config: ServeConfig, overrides: dict[str, Any] | None = None) -> str:
    """Start Serve on this Ray cluster with `config`; return the base URL. Returns once ready."""
    settings = make_settings(overrides, file=config.settings)
    app = build_app(settings, config.deployments)
    http = {"host": config.host, "port": config.port}
    if config.request_timeout_s:
        http["request_timeout_s"] = config.request_timeout_s
    serve.start(http_options=http)
    serve.run(app, name=config.app_name, route_prefix=config.route_prefix)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return f"http://{host}:{config.port}{config.route_prefix.rstrip('/')}"
