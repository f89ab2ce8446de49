#!/usr/bin/env python3
"""Drives sluice-frontend with the official `openai` client (PyPI).

Run by tests/integration/test_frontend.c with SLUICE_FRONTEND_URL set to the
frontend's /v1 base URL. A missing `openai` package is a failure, not a skip.
Exit status 0 when every check passes.
"""
import os
import sys

import openai  # noqa: E402  (ImportError fails the test on purpose)

url = os.environ["SLUICE_FRONTEND_URL"]
client = openai.OpenAI(base_url=url, api_key=os.environ.get("SLUICE_API_KEY", "none"))

# streaming chat
stream = client.chat.completions.create(
    model="tiny",
    messages=[{"role": "user", "content": "hello"}],
    max_tokens=8,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
    extra_body={"ignore_eos": True},
)
text, finish, usage = "", None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for ch in chunk.choices:
        if ch.delta.content:
            text += ch.delta.content
        if ch.finish_reason:
            finish = ch.finish_reason
assert finish == "length", finish
assert usage is not None and usage.completion_tokens == 8, usage
whole = client.chat.completions.create(
    model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0,
    extra_body={"ignore_eos": True})
assert whole.choices[0].message.content == text, (whole.choices[0].message.content, text)

# non-streaming completions
c = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5,
                              temperature=0, extra_body={"ignore_eos": True})
assert c.object == "text_completion"
assert c.usage.completion_tokens == 5 and c.choices[0].finish_reason == "length", c

# models
assert [m.id for m in client.models.list().data] == ["tiny"]

# an error case: unknown model -> NotFoundError (404), bad parameter -> 400
try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    sys.exit("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
try:
    client.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=7)
    sys.exit("bad temperature accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "temperature" in str(e)
print("openai client: ok")
