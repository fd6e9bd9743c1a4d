"""Settings from the environment (prefix REAPER_): the only module that reads os.environ."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class LocalSettings(BaseSettings):
    """What the command line takes from the environment."""

    model_config = SettingsConfigDict(env_prefix="REAPER_", extra="ignore")

    database_url: SecretStr | None = None

    def database_url_value(self) -> str | None:
        """The DSN, if set; it may hold a password, so never print it."""
        return self.database_url.get_secret_value() if self.database_url else None
