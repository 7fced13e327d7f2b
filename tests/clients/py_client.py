"""Drives the real OpenAI Python SDK against codexmesh's /v1 surface, one scenario per run.

Usage: py_client.py SCENARIO  (base URL in OPENAI_BASE_URL, the pool key in OPENAI_API_KEY)
Prints one JSON object with what the SDK returned; exits non-zero with the SDK's error otherwise.
The end-to-end test (tests/e2e/tests/clients.rs) asserts on that JSON and on what the simulator
received.
"""

import asyncio
import json
import sys

import openai

MODEL = "gpt-5.1-codex"
TOOLS_CHAT = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def client():
    return openai.OpenAI(max_retries=0, timeout=30)


def models():
    page = client().models.list()
    ids = [m.id for m in page.data]
    one = client().models.retrieve(ids[0]) if ids else None
    return {"ids": ids, "retrieved": one.id if one else None}


def responses_create():
    r = client().responses.create(model=MODEL, input="Say hello.", instructions="Be brief.")
    return {"id": r.id, "status": r.status, "text": r.output_text, "usage": r.usage.total_tokens}


def responses_stream():
    types, text = [], ""
    stream = client().responses.create(model=MODEL, input="Say hello.", stream=True)
    for event in stream:
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    return {"types": types, "text": text}


def responses_stream_helper():
    deltas = 0
    with client().responses.stream(model=MODEL, input="Say hello.") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas += 1
        final = stream.get_final_response()
    return {"deltas": deltas, "text": final.output_text, "status": final.status}


def chat():
    r = client().chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello."},
        ],
    )
    c = r.choices[0]
    return {
        "object": r.object,
        "text": c.message.content,
        "finish_reason": c.finish_reason,
        "total_tokens": r.usage.total_tokens,
    }


def chat_stream():
    text, finish, usage, chunks = "", None, None, 0
    stream = client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.total_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
            if choice.finish_reason:
                finish = choice.finish_reason
    return {"text": text, "finish_reason": finish, "total_tokens": usage, "chunks": chunks}


def chat_tools():
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client().chat.completions.create(model=MODEL, messages=messages, tools=TOOLS_CHAT)
    c = r.choices[0]
    calls = c.message.tool_calls or []
    out = {
        "finish_reason": c.finish_reason,
        "calls": [{"name": t.function.name, "arguments": t.function.arguments} for t in calls],
    }
    if calls:
        # The tool's result goes back; the model answers in text.
        messages.append(c.message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "Sunny, 21 C"})
        r2 = client().chat.completions.create(model=MODEL, messages=messages, tools=TOOLS_CHAT)
        out["second_finish_reason"] = r2.choices[0].finish_reason
        out["second_text"] = r2.choices[0].message.content
    return out


def chat_tools_stream():
    names, args, finish = [], "", None
    stream = client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=TOOLS_CHAT,
        stream=True,
    )
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names.append(call.function.name)
                if call.function and call.function.arguments:
                    args += call.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    return {"names": names, "arguments": args, "finish_reason": finish}


def async_client():
    async def run():
        c = openai.AsyncOpenAI(max_retries=0, timeout=30)
        chat = await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}]
        )
        resp = await c.responses.create(model=MODEL, input="Say hello.")
        text = ""
        stream = await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}], stream=True
        )
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
        await c.close()
        return {
            "chat": chat.choices[0].message.content,
            "responses": resp.output_text,
            "stream": text,
        }

    return asyncio.run(run())


def bad_request():
    """An unsupported parameter value: the SDK must raise a 400 with OpenAI's shape."""
    try:
        client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2
        )
    except openai.BadRequestError as e:
        return {"status": e.status_code, "code": e.code, "param": e.param}
    return {"status": 200}


SCENARIOS = {
    f.__name__: f
    for f in [
        models,
        responses_create,
        responses_stream,
        responses_stream_helper,
        chat,
        chat_stream,
        chat_tools,
        chat_tools_stream,
        async_client,
        bad_request,
    ]
}

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in SCENARIOS:
        sys.exit(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    try:
        print(json.dumps(SCENARIOS[name]()))
    except openai.APIError as e:
        sys.exit(f"{type(e).__name__}: {e}")
