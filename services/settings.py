"""Serving settings: one pydantic-settings class, validated when the app is built (never at import).

Values come from, in order of precedence: command-line flags (`muxrec serve --registry ...`),
environment variables (MUXREC_ prefix; REDIS_URL without one), the `args:` of deploy/serve.yaml, then
the defaults below (`from_sources`). A file holds defaults; the environment of a container or a shell
wins over it, and an explicit flag over both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Mapping

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from muxrec.artifacts import NAME_PATTERN

RegistryName = Annotated[str, Field(pattern=NAME_PATTERN)]  # one path part inside the registry

_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "admin", "token", "xxx"}


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MUXREC_", extra="forbid", frozen=True)

    registry: Path = Path("artifacts")
    model: RegistryName = "ml-100k-deepfm"  # registry name of the model to serve
    version: RegistryName = "latest"  # version or alias served while the serving alias does not exist yet
    serving_alias: RegistryName = "serving"  # registry alias naming the live version; reloads move it
    # A gateway replica looks at the alias file at most this often (a reload through it applies at once).
    alias_check_s: float = Field(0.5, ge=0, le=60)
    # The FeatureSelector looks for rankings published after the deploy (`muxrec select`) at most this often.
    rankings_check_s: float = Field(2.0, ge=0, le=3600)

    # Redis embedding cache; REDIS_URL= (empty) selects the in-process LRU instead.
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "MUXREC_REDIS_URL",
                                                                                      "redis_url"))
    cache_ttl_s: int = Field(3600, gt=0)
    redis_timeout_s: float = Field(0.05, gt=0)  # socket and connect timeout
    breaker_failures: int = Field(3, gt=0)  # consecutive Redis failures that open the breaker
    breaker_cooldown_s: float = Field(2.0, ge=0)  # then skip Redis this long, then let one trial call through
    redis_retries: int = Field(1, ge=0)  # redis-py Retry with exponential backoff, per command
    lru_capacity: int = Field(100_000, gt=0)

    # Request bounds.
    max_candidates: int = Field(1000, gt=0, le=100_000)
    max_embed_ids: int = Field(1000, gt=0, le=100_000)
    max_body_bytes: int = Field(1 << 20, gt=0)
    max_string_length: int = Field(512, gt=0)
    max_image_bytes: int = Field(256 << 10, gt=0)  # one image of an `image` feature, before base64
    # A model call without an answer this long (e.g. its only replica died and is restarting) is a 503
    # with Retry-After; keep it below http_options.request_timeout_s (deploy/serve.yaml), whose 408 has none.
    call_timeout_s: float = Field(5.0, gt=0, le=300)

    # Multi-task models: default ranking weights per task (a request's `blend` wins); empty: the spec's blend.
    rank_blend: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(default_factory=dict)

    admin_token: SecretStr | None = None  # MUXREC_ADMIN_TOKEN; without it /v1/admin/* refuses everything

    @field_validator("admin_token")
    @classmethod
    def _no_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        secret = value.get_secret_value()
        if secret.lower() in _PLACEHOLDERS or len(secret) < 16:
            raise ValueError("MUXREC_ADMIN_TOKEN must be a real secret of at least 16 characters, not a placeholder")
        return value

    @classmethod
    def from_sources(cls, file: Mapping[str, Any] | None = None, flags: Mapping[str, Any] | None = None
                     ) -> "ServeSettings":
        """Settings with flags over environment over `file` (serve.yaml args) over defaults."""
        from_env = cls().model_fields_set  # fields the environment sets (defaults are not "set")
        defaults = {k: v for k, v in (file or {}).items() if k not in from_env}
        return cls(**{**defaults, **(flags or {})})

    @property
    def use_redis(self) -> bool:
        return bool(self.redis_url)
