"""Builds the one ``openai`` client a worker uses, from settings.

Azure when ``AZURE_OPENAI_ENDPOINT`` is set, else OpenAI or any compatible base URL (the local model
included). The client owns a connection pool sized for a gevent worker holding thousands of streams: the
SDK's default of 1,000 connections would queue streams beyond it.
"""

from __future__ import annotations

import select
import types
from typing import Any

import httpcore2._utils as httpcore2_utils
import httpx2
import openai

from service.config import Settings

MAX_UPSTREAM_CONNECTIONS = 10_000
POOLS = 16  # SDK clients (connection pools) per worker; see StreamingService
# the SDK's per-request telemetry headers, left out of each request (see ``_OpenAI.platform_headers``)
UNSENT_HEADERS: dict[str, Any] = {
    name: openai.Omit() for name in ("X-Stainless-Async", "X-Stainless-Retry-Count", "X-Stainless-Read-Timeout")
}


def server_root(base_url: str) -> str:
    """An OpenAI-compatible base URL without its ``/v1``: where llama-server keeps its own endpoints."""
    return base_url.rstrip("/").removesuffix("/v1")


def build_http_client(settings: Settings) -> httpx2.Client:
    return httpx2.Client(
        limits=httpx2.Limits(max_connections=MAX_UPSTREAM_CONNECTIONS, max_keepalive_connections=1_000),
        # a read that waits past the idle timeout means a dead upstream (the watchdog has already ended the
        # stream); the margin keeps the watchdog's event first
        timeout=httpx2.Timeout(timeout=settings.stream_idle_timeout + 5, connect=settings.upstream_connect_timeout),
    )


def _retryable(response: httpx2.Response) -> bool:
    """Only passing trouble is worth another attempt: 408, 429 and 5xx. The SDK also retries 409, a refusal
    of the request itself that no retry mends."""
    status = response.status_code
    return status in (408, 429) or status >= 500


class _OpenAI(openai.OpenAI):
    # a provider that asks for a longer wait than this (``Retry-After``) is not waited for: the client gets the
    # 503 at once, with the provider's wait, rather than nothing for minutes
    longest_retry_wait: float | None = None

    def _should_retry(self, response: httpx2.Response) -> bool:
        return _retryable(response) and not self._asks_too_long_a_wait(response) and super()._should_retry(response)

    def platform_headers(self) -> dict[str, str]:
        """None of the SDK's ``X-Stainless-*`` telemetry (this host's OS, architecture and Python version): a provider
        needs none of it, and with ``UNSENT_HEADERS`` it was nine of a request's eighteen headers, each built,
        checked and written on every request (a fifth of the SDK's work to build one, by instruction count)."""
        return {}

    def _asks_too_long_a_wait(self, response: httpx2.Response) -> bool:
        wait = self._parse_retry_after_header(response.headers)
        return wait is not None and self.longest_retry_wait is not None and wait > self.longest_retry_wait

    def _send_request(self, request: httpx2.Request, *, stream: bool, **kwargs: Any) -> httpx2.Response:
        """A provider that took the request and did not start its reply within the read timeout is not asked
        again: the client has already waited that long with nothing to show. The SDK passes its own errors on
        without a retry, so the timeout leaves as one (connect, write and pool timeouts are still retried)."""
        try:
            return super()._send_request(request, stream=stream, **kwargs)
        except httpx2.ReadTimeout as exc:
            raise openai.APITimeoutError(request=request) from exc


class _AzureOpenAI(_OpenAI, openai.AzureOpenAI):
    """Azure's client with the same retry rules (``AzureOpenAI`` is an ``OpenAI``: its own methods come first)."""


def build_client(settings: Settings) -> openai.OpenAI:
    """The SDK retries connection errors, 408, 429 and 5xx itself: ``upstream_attempts`` in all, after its backoff
    or the provider's ``Retry-After`` when that is no longer than ``STREAM_IDLE_TIMEOUT``.

    On Azure the request's model is the deployment name, so a request may pick any of ``CHAT_MODELS``.
    """
    retries = settings.upstream_attempts - 1
    http_client = build_http_client(settings)
    client: _OpenAI
    if settings.provider == "azure":
        client = _AzureOpenAI(
            azure_endpoint=settings.azure_endpoint or "",
            api_key=settings.azure_api_key,
            api_version=settings.openai_api_version,
            max_retries=retries,
            http_client=http_client,
        )
    else:
        client = _OpenAI(
            api_key=settings.openai_api_key or "local",
            base_url=settings.openai_base_url,
            max_retries=retries,
            http_client=http_client,
        )
    client.longest_retry_wait = settings.stream_idle_timeout
    return client


def build_clients(settings: Settings, count: int = POOLS) -> list[openai.OpenAI]:
    use_real_poll_for_idle_checks()
    return [build_client(settings) for _ in range(count)]


def use_real_poll_for_idle_checks() -> None:
    """httpcore probes every idle pooled connection with a zero-timeout ``select.poll()`` on each request start and
    end (has the server closed it?). Under gevent that poll is emulated through the hub; a zero-timeout poll never
    blocks, so the real ``poll(2)`` gives the same answer for a fraction of the CPU (see bench/README.md)."""
    from gevent import monkey

    if not monkey.is_module_patched("select"):
        return
    real_select = types.SimpleNamespace(
        poll=monkey.get_original("select", "poll"),
        select=monkey.get_original("select", "select"),
        POLLIN=select.POLLIN,
    )
    setattr(httpcore2_utils, "select", real_select)  # noqa: B010 - replacing one module global on purpose
