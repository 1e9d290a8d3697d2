"""The chat routes' fast lane (`gateway.direct_routes`): a request it takes gets what the app would have answered —
every error class in its route's dialect, the same headers — and everything else still goes through the app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse, Response
from starlette.testclient import TestClient

from gateway.anthropic.errors import ANTHROPIC
from gateway.app import create_app
from gateway.direct_routes import DirectRoute, DirectRoutes
from gateway.http_errors import Dialect, dialect_route, install_error_handler
from gateway.openai.errors import OPENAI
from tests.gateway.test_http_errors import CASES
from tests.inprocess import settings_for

DIALECTS: dict[str, Dialect] = {"openai": OPENAI, "anthropic": ANTHROPIC}


async def handler(request: Request) -> Response:
    """Raises the case the query names, fails like a bug, or answers."""
    case = request.query_params.get("case")
    if case == "bug":
        raise RuntimeError("secret internals")
    if case is not None:
        raise CASES[int(case)][0]
    return JSONResponse({"answered": request.url.path}, headers={"x-handler": "yes"})


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The same handler twice per dialect: behind the app's routing (`/app/<dialect>`) and in the lane
    (`/lane/<dialect>`, registered in the app too, as the gateway registers its chat routes)."""
    app = FastAPI()
    install_error_handler(app, OPENAI)
    lane = []
    for name, dialect in DIALECTS.items():
        router = APIRouter(route_class=dialect_route(dialect))
        for path in (f"/app/{name}", f"/lane/{name}"):
            router.add_api_route(path, handler, methods=["POST"], response_model=None)
        app.include_router(router)
        lane.append(DirectRoute("POST", f"/lane/{name}", handler, dialect))
    app.add_middleware(DirectRoutes, routes=lane)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("case", [*map(str, range(len(CASES))), "bug"])
def test_the_lane_answers_as_the_app_does(client: TestClient, dialect: str, case: str) -> None:
    via_app = client.post(f"/app/{dialect}", params={"case": case})
    via_lane = client.post(f"/lane/{dialect}", params={"case": case})
    assert via_lane.status_code == via_app.status_code >= 400
    assert via_lane.content == via_app.content
    assert via_lane.headers.get("retry-after") == via_app.headers.get("retry-after")
    if case == "bug":
        assert via_lane.status_code == 500 and "secret internals" not in via_lane.text


def test_only_its_own_method_and_path_take_the_lane(client: TestClient) -> None:
    answered = client.post("/lane/openai")
    assert answered.status_code == 200 and answered.json() == {"answered": "/lane/openai"}
    # another method on the path, or a path beside it: the app's routing answers, in its error shape
    wrong_method = client.get("/lane/openai")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["message"] == "method not allowed"
    redirected = client.post("/lane/openai/", follow_redirects=False)  # the app's redirect, not the lane
    assert redirected.status_code == 307 and "x-handler" not in redirected.headers


def lane_of(app: FastAPI) -> dict[tuple[str, str], DirectRoute] | None:
    """The routes of the app's lane, if it has one."""
    middleware = [m for m in app.user_middleware if m.cls is DirectRoutes]  # type: ignore[comparison-overlap]
    if not middleware:
        return None
    routes = middleware[0].kwargs["routes"]
    assert isinstance(routes, list)
    return {(r.method, r.path): r for r in routes}


def test_the_gateway_takes_its_chat_routes_through_the_lane_unless_it_guards_two_ports(tmp_path: Path) -> None:
    one_port = lane_of(create_app(settings_for(None, tmp_path / "a.db")))
    assert one_port is not None
    assert set(one_port) == {("POST", "/v1/chat/completions"), ("POST", "/v1/responses"),
                                    ("POST", "/v1/messages")}
    dialects: dict[str, Dialect] = {path: route.dialect for (_, path), route in one_port.items()}
    assert dialects["/v1/messages"] is ANTHROPIC and dialects["/v1/chat/completions"] is OPENAI
    # with an admin port of its own, the port guard (a dependency of every route) must see every request
    two_ports = create_app(settings_for(None, tmp_path / "b.db", admin_port=9999))
    assert lane_of(two_ports) is None
