"""The free-text scorers on the labelled check set (`distiller/scorer_checks/support_replies.jsonl`): accuracy
overall and per kind, for the similarity scorer and for the embedded model (SmolLM2-135M-Instruct) as the LLM
judge — the plumbing end to end with the only model that runs offline here, not a judge anyone should gate on.

    python -m bench.scorers [--judge-items 56] [--judge-max-tokens 60]

One model server (the embedded default: SmolLM2 for chat, all-MiniLM-L6-v2 for `/v1/embeddings`) is started for
the run. The similarity scale needs the teacher asked twice; the check set has no teacher to ask, so each
request's *different good reply* stands in for the teacher's second answer (parity 1 at their median cosine)
and the other requests' replies define 0 — stated in the result. The judge is asked through the gateway's
own provider code, both orders, cached; its swap consistency is the share of items whose verdict did not
depend on the order. The raw result goes to bench/results/scorers-<date>-<commit>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.results import write_result
from distiller.scorer_check import check_scorer, load_check_set
from gateway.chat.bodies import upstream_body
from gateway.config import EmbeddedConfig, Settings
from gateway.embedded import EmbeddedModelServer
from gateway.pricing import resolve_price
from gateway.providers import build_provider
from gateway.providers.base import redactor
from gateway.scoring import Comparison
from gateway.scoring.judge import JudgeModel, JudgeScorer
from gateway.scoring.similarity import HttpEmbedder, SimilarityScorer, fit_scale
from gateway.students import student_client


async def measure(server: EmbeddedModelServer, judge_items: int, judge_max_tokens: int) -> dict[str, Any]:
    items = load_check_set()
    result: dict[str, Any] = {"check_set": "distiller/scorer_checks/support_replies.jsonl", "items": len(items)}
    async with student_client(server.api_base, server.api_key, 600) as client:
        embedder = HttpEmbedder(client)
        second = [(i.teacher, i.candidate) for i in items if i.kind == "different_good"]
        scale = await fit_scale(embedder, second, list(dict.fromkeys(i.teacher for i in items)),
                                source="each request's different good reply as the teacher's second answer")
        started = time.perf_counter()
        similarity = await check_scorer(SimilarityScorer(embedder, scale), items)
        result["similarity"] = {"scale": scale.to_json(), "seconds": round(time.perf_counter() - started, 2),
                                **similarity}
    teacher = server.teacher()
    provider = build_provider(teacher, Settings(), redactor([server.api_key]))

    async def complete(body: dict[str, Any]) -> dict[str, Any]:
        return await provider.complete(upstream_body(body, teacher.upstream_model))

    price = resolve_price(teacher.model, teacher.input_cost_per_token, teacher.output_cost_per_token)
    judge = JudgeScorer(JudgeModel(teacher.served_name, complete, teacher.upstream_model, price, judge_max_tokens))
    chosen = items[:judge_items]
    samples = await judge.score([Comparison(i.request, {"role": "assistant", "content": i.candidate},
                                            {"role": "assistant", "content": i.teacher}) for i in chosen[:3]])
    started = time.perf_counter()
    verdicts = await check_scorer(judge, chosen)
    seconds = time.perf_counter() - started
    again = time.perf_counter()
    await check_scorer(judge, chosen)  # every usable verdict again: from the cache
    result["judge"] = {"model": teacher.served_name, "max_tokens": judge_max_tokens, "seconds": round(seconds, 1),
                       "rescore_seconds": round(time.perf_counter() - again, 3), "usage": judge.usage.to_json(),
                       "price_note": "the embedded model's simulated price (embedded.input/output_cost_per_token)",
                       "sample_rationales": [s.rationale for s in samples],
                       **verdicts}
    await provider.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge-items", type=int, default=56, help="check items the judge is asked about")
    parser.add_argument("--judge-max-tokens", type=int, default=60, help="max_tokens of each judge reply")
    args = parser.parse_args()
    server = EmbeddedModelServer(EmbeddedConfig())
    server.start()
    try:
        result = asyncio.run(measure(server, args.judge_items, args.judge_max_tokens))
    finally:
        server.stop()
    for name in ("similarity", "judge"):
        r = result[name]
        kinds = ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in r["by_kind"].items())
        print(f"{name}: accuracy {r['accuracy']:.3f} on {r['items']} items ({kinds}); "
              f"swap consistency {r['swap_consistency']}; rejecting everything: {r['reject_all_accuracy']}")
    print(f"judge: {result['judge']['usage']}, {result['judge']['seconds']} s; rescored from the cache in "
          f"{result['judge']['rescore_seconds']} s")
    print(write_result("scorers", result))


if __name__ == "__main__":
    main()
