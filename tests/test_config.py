from __future__ import annotations

import pytest

from service import create_app
from service.config import LOCAL_MODEL_NAME, ConfigError, Settings


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
        ({"RATE_LIMIT": "often"}, "RATE_LIMIT"),
        ({"RESUME_GRACE_SECONDS": "-1"}, "RESUME_GRACE_SECONDS"),
        ({"MODEL_CONTEXT_WINDOW": "gpt-4o=big"}, "MODEL_CONTEXT_WINDOW"),
        ({"MODEL_CONTEXT_WINDOW": "100"}, "MODEL_CONTEXT_WINDOW"),
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
    rates = Settings.from_env({"RATE_LIMIT": "10 per 2 minutes", "TOKEN_BUDGET": "40000/hour"})
    assert (rates.rate_limit, rates.token_budget) == ("10 per 2 minutes", "40000/hour")


def test_context_windows_and_the_local_reply_cap() -> None:
    windows = Settings.from_env({"OPENAI_API_KEY": "k", "MODEL_CONTEXT_WINDOW": "16000, gpt-4o=128000"})
    assert (windows.context_window, windows.context_windows) == (16000, (("gpt-4o", 128000),))
    assert Settings.from_env({"OPENAI_API_KEY": "k"}).max_tokens is None
    assert Settings.from_env({}).max_tokens == 512  # the demo model: a cap, so a loop cannot run to the window
    assert Settings.from_env({"LOCAL_MODEL_URL": "http://x/v1", "OPENAI_API_KEY": "local"}).max_tokens == 512
    assert Settings.from_env({"MAX_COMPLETION_TOKENS": "64"}).max_tokens == 64
