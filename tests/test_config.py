from __future__ import annotations

import pytest

from service import create_app
from service.config import LOCAL_MODEL_NAME, ConfigError, Settings, parse_rate


def test_factory_uses_overrides(tmp_path: object) -> None:
    app = create_app({"database_url": "sqlite://", "rate_limit": "5/minute"})
    assert not app.testing
    assert app.extensions["chat_gateway"].settings.rate_limit == "5/minute"


def test_unknown_override_fails_loudly() -> None:
    with pytest.raises(ConfigError, match="Unknown settings"):
        Settings().with_overrides({"nope": 1})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAM_IDLE_TIMEOUT": "soon"}, "STREAM_IDLE_TIMEOUT"),
        ({"MAX_STREAMS_PER_USER": "0"}, "MAX_STREAMS_PER_USER"),
        ({"HISTORY_MESSAGES": "x"}, "HISTORY_MESSAGES"),
        ({"TOKEN_BUDGET": "lots"}, "TOKEN_BUDGET"),
        ({"MODERATION": "maybe"}, "MODERATION"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_provider_selection() -> None:
    assert Settings.from_env({}).provider == "local"
    assert Settings.from_env({}).chat_model == LOCAL_MODEL_NAME
    assert Settings.from_env({"OPENAI_API_KEY": "k"}).provider == "openai"
    assert Settings.from_env({"OPENAI_BASE_URL": "http://x/v1"}).provider == "openai"
    azure = Settings.from_env({"AZURE_OPENAI_ENDPOINT": "https://x", "OPENAI_API_KEY": "k", "CHAT_MODEL": "dep"})
    assert azure.provider == "azure"
    assert azure.allowed_models == ("dep",)


def test_chat_models_and_rate_parsing() -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": "k", "CHAT_MODEL": "a", "CHAT_MODELS": "a, b"})
    assert settings.allowed_models == ("a", "b")
    assert parse_rate("X", "40000/hour") == (40000, 3600)
    assert parse_rate("X", "10 per 2 minutes") == (10, 120)
