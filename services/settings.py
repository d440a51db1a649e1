"""Serving settings: one pydantic-settings class, validated when the app is built (never at import).

Values come from, in order of precedence: the `args:` of deploy/serve.yaml, environment variables
(MUXREC_ prefix; REDIS_URL without one), then the defaults below.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "admin", "token", "xxx"}


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MUXREC_", extra="forbid", frozen=True)

    registry: Path = Path("artifacts")
    model: str = "ml-100k-deepfm"  # registry name of the model to serve
    version: str = "latest"  # version or alias served at start-up
    serving_alias: str = "serving"  # registry alias that names the live version; reloads move it

    # Redis embedding cache; REDIS_URL= (empty) selects the in-process LRU instead.
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "MUXREC_REDIS_URL",
                                                                                      "redis_url"))
    cache_ttl_s: int = Field(3600, gt=0)
    redis_timeout_s: float = Field(0.05, gt=0)  # socket and connect timeout
    breaker_cooldown_s: float = Field(5.0, ge=0)  # stop calling Redis this long after an error
    lru_capacity: int = Field(100_000, gt=0)

    # Request bounds.
    max_candidates: int = Field(1000, gt=0, le=100_000)
    max_embed_ids: int = Field(1000, gt=0, le=100_000)
    max_body_bytes: int = Field(1 << 20, gt=0)
    max_string_length: int = Field(512, gt=0)

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

    @property
    def use_redis(self) -> bool:
        return bool(self.redis_url)
