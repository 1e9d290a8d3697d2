"""The other `/v1` routes apps call, forwarded to the teacher: the official `openai` SDK against the gateway app in
this process, whose teacher is a scripted OpenAI-compatible server on a real socket that records what it received
(`tests.openai_upstream`)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.inprocess import InProcessGateway, inprocess_gateway, settings_for
from tests.openai_upstream import ScriptedUpstream
from tests.servers import Server

KEY = "gk-passthrough"
UPSTREAM_KEY = "sk-upstream-secret-123456"


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    store = tmp_path_factory.mktemp("passthrough") / "store.db"
    settings = settings_for(None, store, teacher="openai/gpt-4o-mini", teacher_api_base=f"{upstream.url}/v1",
                            teacher_api_key=UPSTREAM_KEY, gateway_keys=KEY)
    with inprocess_gateway(settings) as app:
        yield app


def test_embeddings_are_forwarded_byte_for_byte_with_the_gateways_credentials(
        gateway: InProcessGateway, upstream: ScriptedUpstream) -> None:
    before = gateway.metric("protege_passthrough_cost_usd_total", api="embeddings")
    result = gateway.openai(api_key=KEY).embeddings.create(model="text-embedding-3-small", input=["a", "b"],
                                                           extra_headers={"OpenAI-Organization": "org-evil"})
    assert [e.index for e in result.data] == [0, 1] and result.data[1].embedding[0] == pytest.approx(0.2)
    received = upstream.last("/v1/embeddings")
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # never the client's key
    assert "openai-organization" not in received.headers and KEY not in str(received.headers)
    assert gateway.metric("protege_passthrough_requests_total", api="embeddings", status="200") >= 1
    # 8 tokens of text-embedding-3-small at its price in the bundled map
    assert gateway.metric("protege_passthrough_cost_usd_total", api="embeddings") - before == pytest.approx(8 * 2e-8)
    assert gateway.rows() == []  # not chat: never captured

    raw = b'{ "model" : "text-embedding-3-small",\n  "input": "caf\xc3\xa9", "dimensions": 3 }'
    answer = gateway.client.post("/v1/embeddings", content=raw, headers={"authorization": f"Bearer {KEY}",
                                                                         "content-type": "application/json"})
    assert answer.status_code == 200 and upstream.last("/v1/embeddings").body == raw  # byte for byte


def test_legacy_completions_plain_and_streamed(gateway: InProcessGateway) -> None:
    client = gateway.openai(api_key=KEY)
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this")
    assert completion.choices[0].text == " completed: Say this"
    streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Say that", stream=True))
    assert streamed == "completed:Saythat"  # the scripted server streams it word by word


def test_moderations_and_a_multipart_audio_upload(gateway: InProcessGateway, upstream: ScriptedUpstream) -> None:
    client = gateway.openai(api_key=KEY)
    assert client.moderations.create(input="hello").results[0].flagged is False
    audio = bytes(range(256)) * 40
    transcript = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(audio)))
    received = upstream.last("/v1/audio/transcriptions")
    assert received.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert audio in received.body and b'name="model"' in received.body
    assert transcript.text == f"{len(received.body)} bytes heard"


def test_files_upload_list_and_binary_download_with_query(gateway: InProcessGateway,
                                                          upstream: ScriptedUpstream) -> None:
    client = gateway.openai(api_key=KEY)
    uploaded = client.files.create(file=("data.jsonl", io.BytesIO(b'{"a": 1}\n')), purpose="batch")
    assert uploaded.id == "file-1"
    list(client.files.list(purpose="batch", limit=5))
    assert upstream.last("/v1/files?").path in ("/v1/files?purpose=batch&limit=5", "/v1/files?limit=5&purpose=batch")
    assert client.files.content("file-1").read() == bytes(range(256))


def test_an_upstream_4xx_passes_through_as_sent(gateway: InProcessGateway) -> None:
    unknown = gateway.client.get("/v1/files/file-404", headers={"authorization": f"Bearer {KEY}"})
    assert unknown.status_code == 404 and unknown.json() == {"error": {"message": "no such route"}}
    assert "x-upstream" not in unknown.headers  # the upstream's own headers stay behind


def test_keys_and_switch_off(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    settings = settings_for(None, tmp_path / "s.db", teacher="openai/gpt-4o-mini",
                            teacher_api_base=f"{upstream.url}/v1", teacher_api_key=UPSTREAM_KEY, gateway_keys=KEY)
    with inprocess_gateway(settings) as gateway, pytest.raises(openai.AuthenticationError):
        gateway.openai(api_key="wrong").embeddings.create(model="m", input="x")
    off = settings.model_copy(update={"passthrough": False})
    with inprocess_gateway(off) as gateway:
        response = gateway.client.post("/v1/embeddings", json={"model": "m", "input": "x"},
                                       headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 501 and response.json()["error"]["code"] == "passthrough_off"


def test_a_teacher_that_cannot_forward_is_a_clear_501(katan: Server, tmp_path: Path) -> None:
    # an Anthropic teacher (through litellm): no byte-for-byte route, and litellm has no Anthropic embeddings
    teacher = {"model": "anthropic/claude-sonnet-4-5", "api_base": katan.url, "api_key": "sk-ant-test-123456"}
    settings = settings_for(None, tmp_path / "s.db", config={"teachers": [teacher]})
    with inprocess_gateway(settings) as gateway:
        files = gateway.client.get("/v1/files")
        embeddings = gateway.client.post("/v1/embeddings", json={"model": "voyage-3", "input": "x"})
    assert embeddings.status_code == 501 and "litellm" in embeddings.json()["error"]["message"]
    assert files.status_code == 501 and files.json()["error"]["code"] == "not_served"
    assert "OpenAI-compatible" in files.json()["error"]["message"]


def test_upstream_server_errors_are_502s_that_keep_their_text_in_the_log(tmp_path: Path) -> None:
    upstream = ScriptedUpstream()
    try:
        settings = settings_for(None, tmp_path / "s.db", teacher="openai/gpt-4o-mini",
                                teacher_api_base=f"{upstream.url}/v1", teacher_api_key=UPSTREAM_KEY)
        with inprocess_gateway(settings) as gateway:
            # not a passthrough route: the gateway's own 404, never forwarded
            assert gateway.client.post("/v1/fail", json={}).status_code == 404
            assert not [r for r in upstream.received if r.path == "/v1/fail"]
            upstream.fail_next = True
            response = gateway.client.post("/v1/embeddings", json={"model": "m", "input": "x"})
    finally:
        upstream.close()
    assert response.status_code == 502
    assert "10.0.0.7" not in response.text and response.json()["error"]["type"] == "upstream_error"


def test_embeddings_through_litellm(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    # a teacher on litellm (client: litellm): the embedding goes through litellm's own provider code
    teacher = {"model": "openai/gpt-4o-mini", "api_base": f"{upstream.url}/v1", "api_key": UPSTREAM_KEY,
               "client": "litellm"}
    # one request at a time: a slot that is not given back would refuse the second
    settings = settings_for(None, tmp_path / "s.db", config={"teachers": [teacher], "limits": {"max_concurrent": 1}})
    with inprocess_gateway(settings) as gateway:
        for _ in range(2):
            result = gateway.openai().embeddings.create(model="text-embedding-3-small", input="hello")
        steer = gateway.client.post("/v1/embeddings", json={"model": "m", "input": "x", "api_base": "http://evil"})
    assert result.data[0].embedding[:1] == [pytest.approx(0.1)] and result.usage.prompt_tokens == 4
    assert upstream.last("/v1/embeddings").headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert steer.status_code == 400 and steer.json()["error"]["param"] == "api_base"


@pytest.mark.parametrize("path", ["/v1/files/%2e%2e/chat/completions",
                                  "/v1/files/..%2Fchat%2Fcompletions", "/v1/batches/%2e/x"])
def test_dot_segments_never_reach_the_upstream(gateway: InProcessGateway, upstream: ScriptedUpstream,
                                               path: str) -> None:
    seen = len(upstream.received)
    response = gateway.client.post(path, json={"model": "m", "messages": []},
                                   headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_path", response.text
    assert len(upstream.received) == seen


def test_every_forwarded_request_gives_its_slot_back(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    settings = settings_for(None, tmp_path / "s.db", teacher="openai/gpt-4o-mini",
                            teacher_api_base=f"{upstream.url}/v1", teacher_api_key=UPSTREAM_KEY,
                            config={"limits": {"max_concurrent": 1}})
    with inprocess_gateway(settings) as gateway:
        client = gateway.openai()
        for _ in range(2):  # one slot: a request that kept it would turn the next into a 503
            client.embeddings.create(model="m", input="x")
            assert gateway.client.get("/v1/files/file-404").status_code == 404
            assert "".join(c.choices[0].text for c in client.completions.create(model="m", prompt="p", stream=True))
            with gateway.client.stream("GET", "/v1/files/file-1/content") as response:
                next(response.iter_raw())  # the client leaves after the first chunk
        assert gateway.state.service.concurrency.in_flight == 0
