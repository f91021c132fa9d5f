"""What the SDK scripts share: their settings from the environment, checks
that fail with a clear message, and the JSON summary they print.

tests/official_sdks.rs runs each script with the venv's python and
KEYRELAY_BASE_URL, KEYRELAY_API_KEY and SDK_MODEL set (SDK_FOLLOW_UP=1 asks
the OpenAI script for a `previous_response_id` follow-up, SDK_STRICT=1 for
a strict check of every answer where keyrelay wrote it); it then checks
the summary against what the mock upstream answered and received.
"""

import json
import os
import sys

import pydantic

# One tool, declared in each SDK's own way by the scripts.
TOOL_NAME = "get_weather"
TOOL_DESCRIPTION = "The current weather in a city."
TOOL_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
    "required": ["city"],
}
QUESTION = "What is the weather in Paris?"


def setting(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        fail(f"environment variable {name} is not set")
    return value


def fail(message):
    print(f"SDK check failed: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def check_usage(what, tokens_in, tokens_out, total=None):
    """Usage is there, as positive integers that add up."""
    for name, value in (("input", tokens_in), ("output", tokens_out)):
        check(isinstance(value, int) and value > 0, f"{what}: {name} tokens {value!r}, want a positive integer")
    if total is not None:
        check(total == tokens_in + tokens_out, f"{what}: total tokens {total} != {tokens_in} + {tokens_out}")
    return {"input": tokens_in, "output": tokens_out}


def check_strictly(what, model_class, answer):
    """With SDK_STRICT=1: the answer, as received, validates against the
    SDK's own model, every required field there with its type (the SDKs
    build answers without validating them, so a typed client elsewhere
    could choke on what they let through)."""
    if setting("SDK_STRICT", "0") != "1":
        return
    try:
        model_class.model_validate(answer.model_dump(mode="json", exclude_unset=True))
    except pydantic.ValidationError as err:
        fail(f"{what}: not a valid {model_class.__name__}: {err}")


def tool_result(arguments):
    """What the script's tool answers for one call."""
    return json.dumps({"city": arguments.get("city", "?"), "temperature": 21})


def finish(summary):
    print(json.dumps(summary, sort_keys=True))
