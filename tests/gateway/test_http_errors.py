"""Every error class through every dialect: one handler (`gateway.http_errors`), one renderer per API.

The unit half mounts one route per dialect on a bare app and raises each class of the tree (and what the
framework raises, and a bug) through it. The other half drives the real gateway: unknown routes under each
dialect's prefix, and a store that fails under the admin API and the console (503, never a 500)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.testclient import TestClient

from gateway import errors
from gateway.anthropic.errors import ANTHROPIC
from gateway.console.errors import CONSOLE
from gateway.http_errors import Dialect, dialect_route, install_error_handler
from gateway.openai.errors import OPENAI
from tests.inprocess import InProcessGateway, inprocess_gateway, settings_for
from tests.servers import TEST_ADMIN_TOKEN, Server

# one instance of every class in the tree, with the status a client must get
CASES: list[tuple[errors.ProtegeError, int]] = [
    (errors.ProtegeError("boom"), 500),
    (errors.ConfigError("teachers.0.model: field required"), 500),
    (errors.InternalError("KeyError: 'x'"), 500),
    (errors.BadRequestError("messages: field required", param="messages"), 400),
    (errors.ContextLengthError("too long"), 400),
    (errors.AuthenticationError("missing API key", code="missing_api_key"), 401),
    (errors.PermissionDeniedError("invalid admin token"), 403),
    (errors.NotFoundError("no such task"), 404),
    (errors.MethodNotAllowedError("method not allowed"), 405),
    (errors.RequestTimeoutError("the body did not arrive in time"), 408),
    (errors.PayloadTooLargeError("request body too large"), 413),
    (errors.RateLimitError("slow down", retry_after=3), 429),
    (errors.NotServedError("/v1/files: no configured teacher serves this route"), 501),
    (errors.ServiceUnavailableError("draining", retry_after=2), 503),
    (errors.StoreError("database is locked: /var/lib/protege/store.db"), 503),
    (errors.UpstreamError("the teacher failed"), 502),
    (errors.UpstreamStatusError("bad model", upstream_status=422), 422),
    (errors.UpstreamTimeoutError("the teacher took too long"), 504),
    (errors.CircuitOpenError("the teacher keeps failing", retry_after=5), 503),
]
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}
HIDDEN = {"StoreError": "database is locked", "InternalError": "KeyError"}  # internals a client must not see


def every_class(root: type[errors.ProtegeError] = errors.ProtegeError) -> set[type[errors.ProtegeError]]:
    found = {root}
    for sub in root.__subclasses__():
        if sub.__module__ == "gateway.errors":
            found |= every_class(sub)
    return found


def test_the_cases_cover_the_whole_tree() -> None:
    assert {type(error) for error, _ in CASES} == every_class()


class Body(BaseModel):
    n: int


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """A bare app with one route per dialect, each raising the error it is told to."""
    app = FastAPI()
    install_error_handler(app, OPENAI, prefixes=[("/anthropic", ANTHROPIC), ("/console", CONSOLE)])
    for prefix, dialect in (("/openai", OPENAI), ("/anthropic", ANTHROPIC), ("/console", CONSOLE)):
        router = APIRouter(prefix=prefix, route_class=dialect_route(dialect))

        @router.get("/raise/{index}")
        async def raise_case(index: int) -> None:
            raise CASES[index][0]

        @router.get("/http/{status}")
        async def raise_http(status: int) -> None:
            raise StarletteHTTPException(status)

        @router.post("/validate")
        async def validate(body: Body) -> int:
            return body.n

        @router.get("/bug")
        async def bug() -> None:
            raise RuntimeError("secret internals")

        app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def check_shape(dialect: Dialect, response: object, status: int, error: errors.ProtegeError | None = None) -> str:
    """The response is `dialect`'s shape with `status`; returns the message it shows."""
    from httpx2 import Response

    assert isinstance(response, Response)
    assert response.status_code == status, response.text
    if dialect is CONSOLE:
        assert response.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        message = html.unescape(response.text.split('role="alert">')[1].split("</p>")[0])
    elif dialect is ANTHROPIC:
        body = response.json()
        assert set(body) == {"type", "error"} and body["type"] == "error"
        expected = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        assert body["error"]["type"] == expected
        message = body["error"]["message"]
    else:
        body = response.json()["error"]
        assert set(body) == {"message", "type", "param", "code"}
        if error is not None:
            assert (body["type"], body["param"], body["code"]) == (error.openai_type, error.param, error.code)
        message = body["message"]
    assert message
    return str(message)


DIALECTS = [pytest.param("/openai", OPENAI, id="openai"), pytest.param("/anthropic", ANTHROPIC, id="anthropic"),
            pytest.param("/console", CONSOLE, id="console")]


@pytest.mark.parametrize(("prefix", "dialect"), DIALECTS)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[type(e).__name__ for e, _ in CASES])
def test_each_error_class_in_each_dialect(client: TestClient, prefix: str, dialect: Dialect, index: int) -> None:
    error, status = CASES[index]
    response = client.get(f"{prefix}/raise/{index}")
    message = check_shape(dialect, response, status, error)
    hidden = HIDDEN.get(type(error).__name__)
    if hidden is not None:
        assert hidden not in response.text and message == error.public_message
    else:
        assert message == error.message
    for header, value in error.headers().items():
        assert response.headers[header] == value  # e.g. Retry-After on 429 and 503


@pytest.mark.parametrize(("prefix", "dialect"), DIALECTS)
def test_what_the_framework_raises_and_bugs_take_the_dialects_shape(client: TestClient, prefix: str,
                                                                    dialect: Dialect) -> None:
    assert check_shape(dialect, client.get(f"{prefix}/nowhere"), 404) == "unknown route"
    assert check_shape(dialect, client.delete(f"{prefix}/bug"), 405) == "method not allowed"
    assert check_shape(dialect, client.get(f"{prefix}/http/409"), 409)
    invalid = client.post(f"{prefix}/validate", json={"n": "many"})
    assert check_shape(dialect, invalid, 400).startswith("body.n: ")  # FastAPI locates body fields under `body`
    bug = client.get(f"{prefix}/bug")
    assert check_shape(dialect, bug, 500) == "internal error" and "secret internals" not in bug.text


def test_pydantic_locations_are_spelled_per_dialect() -> None:
    loc = ("messages", 0, "content", "list[ContentPart]", 1, "text")
    assert errors.param_of(loc) == "messages[0].content[1].text"  # OpenAI's spelling
    assert errors.param_of(loc, brackets=False) == "messages.0.content.1.text"  # Anthropic's
    assert errors.param_of(()) is None
    extra = errors.invalid_field([{"loc": ("nope",), "msg": "Extra inputs are not permitted",
                                   "type": "extra_forbidden"}])
    assert (extra.param, extra.message) == ("nope", "nope: unsupported field")


# --- the real gateway -------------------------------------------------------------------------------------

@pytest.fixture
def gateway(katan: Server, tmp_path: Path) -> Iterator[InProcessGateway]:
    with inprocess_gateway(settings_for(katan, tmp_path / "store.db")) as gw:
        yield gw


def test_unknown_routes_answer_in_the_dialect_of_their_prefix(gateway: InProcessGateway) -> None:
    client = gateway.client
    check_shape(OPENAI, client.get("/v1/nowhere"), 404)
    check_shape(OPENAI, client.get("/v1/messagesx"), 404)  # a prefix, not a substring
    check_shape(ANTHROPIC, client.post("/v1/messages/nowhere", json={}), 404)
    check_shape(CONSOLE, client.get("/admin/ui/nowhere"), 404)
    check_shape(OPENAI, client.get("/v1/chat/completions"), 405)
    check_shape(ANTHROPIC, client.post("/v1/messages", content=b"{", headers={"content-type": "application/json"}), 400)


def test_a_failing_store_is_a_503_in_every_dialect_that_reads_it(gateway: InProcessGateway) -> None:
    """The store really fails (its connection closed under the app): the admin API, the console and readiness
    answer 503 in their shapes, with no driver text."""
    auth = {"authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
    assert gateway.client.get("/admin/tasks", headers=auth).status_code == 200
    gateway.client.portal.call(gateway.state.store.close)  # type: ignore[union-attr]  # on the app's loop
    for dialect, response in ((OPENAI, gateway.client.get("/admin/tasks", headers=auth)),
                              (CONSOLE, gateway.client.get("/admin/ui", headers=auth))):
        message = check_shape(dialect, response, 503)
        assert message == errors.StoreError("").public_message
        assert response.headers["retry-after"] == "1"
    check_shape(OPENAI, gateway.client.get("/readyz"), 503)
