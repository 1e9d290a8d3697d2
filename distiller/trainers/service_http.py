"""The HTTP side the hosted trainers without an SDK share (Together AI, Fireworks AI): a client that sends the
API key from its environment variable, and calls whose failures become `TrainerError`s saying what could not
be done and what the service answered."""

from __future__ import annotations

import os
from typing import Any

import httpx

from distiller.trainers.base import TrainerError


def service_client(base_url: str, api_key_env: str, timeout_s: float) -> httpx.Client:
    """A client for `base_url` with the key from `$api_key_env` (read now, never stored)."""
    key = os.environ.get(api_key_env)
    if not key:
        raise TrainerError(f"no API key: set ${api_key_env}")
    return httpx.Client(base_url=base_url.rstrip("/") + "/", headers={"authorization": f"Bearer {key}"},
                        timeout=timeout_s)


def call(client: httpx.Client, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
    """The JSON object the service answers; a transport error, an error status or another body is a
    `TrainerError` "could not <what>: …"."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise TrainerError(f"could not {what}: {exc}") from exc
    if response.status_code >= 400:
        raise TrainerError(f"could not {what}: {response.status_code} {error_message(response)}")
    try:
        data = response.json()
    except ValueError as exc:
        raise TrainerError(f"could not {what}: the service answered {response.text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise TrainerError(f"could not {what}: the service answered {data!r:.200}")
    return data


def error_message(response: httpx.Response) -> str:
    """The text of an error answer: `{"error": {"message": …}}`, `{"error": "…"}` or google.rpc.Status style
    `{"code": …, "message": …}`; else the body's start."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if not isinstance(data, dict):
        return str(data)[:300]
    error = data.get("error", data)
    return str(error.get("message") if isinstance(error, dict) else error)[:300]
