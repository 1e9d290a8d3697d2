"""Apps built on the frameworks users run, pointed at a `protege serve` process by base URL alone, in the modes that
call the Responses API: the OpenAI Agents SDK (its default), LangChain's `ChatOpenAI(use_responses_api=True)`,
and Vercel's AI SDK from Node (its default `openai(...)` provider). The teacher is a scripted OpenAI-compatible
server that calls a tool once and then answers with the tool's result (`tests.openai_upstream`)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.store import Exchange
from tests.inprocess import poll
from tests.openai_upstream import ScriptedUpstream
from tests.servers import Server, start_gateway, stop
from tests.stores import captured

NODE_CLIENTS = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clients") / "store.db"


def rows(store: Path, task: str, count: int) -> list[Exchange]:
    """The task's `count` captured exchanges, once the gateway process has written them (it batches)."""
    return list(poll(lambda: (found := captured(store, task=task)) and len(found) >= count and found,
                     what=f"{count} exchanges of {task}"))


@pytest.fixture(scope="module")
def gateway(upstream: ScriptedUpstream, store: Path) -> Iterator[Server]:
    server = start_gateway(store.parent, "--store", f"sqlite:///{store}", "--teacher", "openai/gpt-4o-mini",
                           "--teacher-api-base", f"{upstream.url}/v1", "--teacher-api-key", "sk-upstream-123456")
    yield server
    stop(server.proc)


def test_openai_agents_sdk_runs_an_agent_with_a_function_tool(gateway: Server, store: Path) -> None:
    from agents import Agent, Runner, function_tool, set_default_openai_client, set_tracing_disabled

    set_tracing_disabled(True)  # its tracer would export to OpenAI
    set_default_openai_client(openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0,
                                                 default_headers={"X-Protege-Task": "agents-sdk"}))
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather for a city."""
        calls.append(city)
        return f"18C and sunny in {city}"

    agent = Agent(name="Assistant", instructions="You answer weather questions.", tools=[get_weather],
                  model="gpt-4o-mini")
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?"))
    assert calls == ["Paris"]
    assert result.final_output == "The tool said: 18C and sunny in Paris"
    first, second = rows(store, "agents-sdk", 2)
    assert first.request["messages"][0] == {"role": "system", "content": "You answer weather questions."}
    assert [m["role"] for m in second.request["messages"]] == ["system", "user", "assistant", "tool"]
    assert second.request["messages"][-1]["content"] == "18C and sunny in Paris"


def test_langchain_chat_openai_on_the_responses_api(gateway: Server, store: Path) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="gpt-4o-mini", base_url=f"{gateway.url}/v1", api_key="x", max_retries=0,  # type: ignore[arg-type]
                     use_responses_api=True, default_headers={"X-Protege-Task": "langchain-responses"})
    reply = llm.invoke([("system", "You are terse."), ("human", "ping")])
    assert reply.text == "ping"
    assert reply.response_metadata.get("id", "").startswith("resp_")
    streamed = "".join(chunk.text for chunk in llm.stream("stream me"))
    assert streamed == "stream me"
    first, second = rows(store, "langchain-responses", 2)
    assert (first.stream, second.stream) == (False, True)
    assert first.request["messages"] == [{"role": "system", "content": "You are terse."},
                                           {"role": "user", "content": "ping"}]


@pytest.fixture(scope="module")
def node_clients() -> Path:
    if shutil.which("node") is None or not (NODE_CLIENTS / "node_modules" / "ai").exists():
        message = "Vercel's AI SDK is not installed: `make node-clients` (npm ci in tests/clients/node)"
        if os.environ.get("PROTEGE_REQUIRE_NODE_CLIENTS"):  # set by the Makefile where npm exists
            pytest.fail(message)
        pytest.skip(message)
    return NODE_CLIENTS


def test_vercel_ai_sdk_default_provider_generate_and_stream(gateway: Server, store: Path, node_clients: Path) -> None:
    out = subprocess.run(["node", "ai_sdk.mjs", f"{gateway.url}/v1", "x"], cwd=node_clients, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    generated, streamed, tools = (json.loads(line) for line in out.stdout.splitlines())
    assert generated["text"] == "ping" and generated["finishReason"] == "stop"
    assert generated["responseId"].startswith("resp_") and generated["usage"]["outputTokens"] == 5
    assert streamed["text"] == "stream me" and streamed["finishReason"] == "stop"
    assert tools["toolCalls"] == ["get_weather"] and tools["toolResults"] == ["18C and sunny in Paris"]
    assert tools["steps"] == 2 and tools["text"] == "The tool said: 18C and sunny in Paris"
    assert [r.stream for r in rows(store, "node-ai-sdk", 4)] == [False, True, False, False]


def test_langchain_openai_embeddings(gateway: Server, upstream: ScriptedUpstream) -> None:
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: by default LangChain first splits texts with tiktoken, whose
    # vocabulary it downloads (no network here); the request to the gateway is the same either way
    embeddings = OpenAIEmbeddings(model="text-embedding-3-small", base_url=f"{gateway.url}/v1", api_key="x",  # type: ignore[arg-type]
                                  check_embedding_ctx_length=False, max_retries=0)
    vectors = embeddings.embed_documents(["first", "second"])
    assert [v[0] for v in vectors] == [pytest.approx(0.1), pytest.approx(0.2)]
    assert embeddings.embed_query("q")[:1] == [pytest.approx(0.1)]
    assert upstream.last("/v1/embeddings").headers["authorization"] == "Bearer sk-upstream-123456"
