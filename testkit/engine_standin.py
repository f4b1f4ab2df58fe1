"""A CPU stand-in for the model engine: an OpenAI-compatible Ray Serve app that "generates"
tokens with a configurable time to first token and inter-token delay.

It takes the rendered `llm_configs` (model id, stream batching) and the name of the rendered
per-deployment options (autoscaling, max ongoing requests), so they apply to it: the Serve side
runs as the operator configured it; only vLLM is replaced.
Streamed tokens go through Ray Serve LLM's own `Batcher` at the llm_config's
`stream_batching_interval_ms` (Ray's default 50 ms) and each batch is one write, as in
Ray Serve LLM's server: the proxies see as many chunks as they would in front of vLLM.
Differences from vLLM: no tokenizer (a token is a word), no continuous batching or KV cache
(delays are fixed per request), no LoRA or tools. Ray Serve LLM's own builders need vLLM
installed, so this is its own app.
(No `from __future__ import annotations`: FastAPI must see the real `Request` type.)
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

# Internal to Ray Serve LLM (pinned ray 2.60.0): the stream batching its LLMServer applies.
from ray.llm._internal.serve.constants import MODEL_RESPONSE_BATCH_TIMEOUT_MS
from ray.llm._internal.serve.utils.batcher import Batcher

api = FastAPI()
WORDS = ("the", "model", "answers", "with", "tokens", "streamed", "one", "by", "one")


@serve.deployment
@serve.ingress(api)
class StandInLLM:
    def __init__(self, model_id: str, ttft_ms: float, itl_ms: float, max_tokens: int, batch_ms: float):
        self.model_id = model_id
        self.ttft = ttft_ms / 1000
        self.itl = itl_ms / 1000
        self.max_tokens = max_tokens
        self.batch_ms = batch_ms

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "owned_by": "llmservice"}]}

    def _tokens(self, body: dict[str, Any]) -> int:
        return max(1, min(int(body.get("max_tokens") or body.get("max_completion_tokens") or 16), self.max_tokens))

    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        text = body.get("prompt") or " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        return len(str(text).split())

    async def _generate(self, n: int) -> AsyncIterator[str]:
        await asyncio.sleep(self.ttft)
        for i in range(n):
            if i:
                await asyncio.sleep(self.itl)
            yield WORDS[i % len(WORDS)] + " "

    def _usage(self, body: dict[str, Any], n: int) -> dict[str, int]:
        p = self._prompt_tokens(body)
        return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}

    async def _respond(self, request: Request, chat: bool) -> Any:
        body = await request.json()
        if body.get("model") != self.model_id:
            msg = f"model {body.get('model')!r} not found; this endpoint serves {self.model_id!r}"
            return JSONResponse({"error": {"message": msg, "type": "invalid_request_error"}}, status_code=404)
        n = self._tokens(body)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            text = "".join([t async for t in self._generate(n)])
            choice = {"index": 0, "finish_reason": "length"}
            choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            return {"id": rid, "object": obj, "created": created, "model": self.model_id,
                    "choices": [choice], "usage": self._usage(body, n)}  # fmt: skip

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def chunks() -> AsyncIterator[str]:
            kind = "chat.completion.chunk" if chat else "text_completion"
            async for token in self._generate(n):
                choice = {"index": 0, "finish_reason": None}
                choice |= {"delta": {"content": token}} if chat else {"text": token}
                chunk = {"id": rid, "object": kind, "created": created, "model": self.model_id, "choices": [choice]}
                yield f"data: {json.dumps(chunk)}\n\n"
            last = {"index": 0, "finish_reason": "length"} | ({"delta": {}} if chat else {"text": ""})
            final: dict[str, Any] = {"id": rid, "object": kind, "created": created, "model": self.model_id,
                                     "choices": [last]}  # fmt: skip
            if include_usage:
                final["usage"] = self._usage(body, n)
            yield f"data: {json.dumps(final)}\n\n"

        async def events() -> AsyncIterator[str]:
            async for batch in Batcher(chunks(), interval_ms=self.batch_ms).stream():
                yield "".join(batch)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Any:
        return await self._respond(request, chat=True)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        return await self._respond(request, chat=False)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve builder taking the rendered `llm_configs` plus the stand-in's timing and the name
    the Serve config's per-deployment options are for."""
    [conf] = args["llm_configs"]
    return StandInLLM.options(name=args["deployment_name"], ray_actor_options={"num_cpus": 0.1}).bind(
        conf["model_loading_config"]["model_id"],
        float(args.get("ttft_ms", 20)),
        float(args.get("itl_ms", 5)),
        int(args.get("max_tokens", 256)),
        _batch_ms(conf),
    )


def _batch_ms(conf: dict[str, Any]) -> float:
    """The stream batching interval Ray Serve LLM's LLMServer would use for this llm_config."""
    interval = (conf.get("experimental_configs") or {}).get("stream_batching_interval_ms")
    return MODEL_RESPONSE_BATCH_TIMEOUT_MS if interval is None else float(interval)
