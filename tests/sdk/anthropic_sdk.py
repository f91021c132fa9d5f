"""The official Anthropic SDK against keyrelay's Messages API: an answer, a
stream folded by the SDK (`messages.stream` + `get_final_message`) and a
tool call round trip, usage checked in each. See common.py."""

import anthropic

from common import (QUESTION, TOOL_DESCRIPTION, TOOL_NAME, TOOL_PARAMETERS, check, check_strictly, check_usage,
                    finish, setting, tool_result)

client = anthropic.Anthropic(base_url=setting("KEYRELAY_BASE_URL"), api_key=setting("KEYRELAY_API_KEY"),
                             max_retries=0, timeout=20)
model = setting("SDK_MODEL")
ask = [{"role": "user", "content": QUESTION}]


def text_of(message):
    return "".join(block.text for block in message.content if block.type == "text")


def usage_of(what, message):
    check_strictly(what, anthropic.types.Message, message)
    return check_usage(what, message.usage.input_tokens, message.usage.output_tokens)


# A plain answer.
message = client.messages.create(model=model, max_tokens=256, messages=ask)
check(message.type == "message" and message.role == "assistant", f"answer: not an assistant message: {message}")
check(text_of(message), f"answer: no text: {message}")
answer = {"text": text_of(message), "stop_reason": message.stop_reason, "usage": usage_of("answer", message)}

# A stream, folded the SDK's way; the text deltas must add up to the final message.
deltas = []
with client.messages.stream(model=model, max_tokens=256, messages=ask) as stream:
    for event in stream:
        if event.type == "text":
            deltas.append(event.text)
    final = stream.get_final_message()
check(len(deltas) > 1, f"stream: {len(deltas)} text deltas, want several")
check("".join(deltas) == text_of(final), f"stream: deltas {deltas!r} != final text {text_of(final)!r}")
streamed = {"text": text_of(final), "stop_reason": final.stop_reason, "usage": usage_of("stream", final)}

# A tool call round trip: every call answered with its id.
tools = [{"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": TOOL_PARAMETERS}]
asked = client.messages.create(model=model, max_tokens=256, messages=ask, tools=tools)
calls = [block for block in asked.content if block.type == "tool_use"]
check(asked.stop_reason == "tool_use", f"tools: stop_reason {asked.stop_reason!r}, want tool_use")
check(calls and all(call.id and call.name for call in calls), f"tools: no tool call with an id and a name: {asked}")
check(all(isinstance(call.input, dict) for call in calls), f"tools: an input is not an object: {asked}")
results = [{"type": "tool_result", "tool_use_id": call.id, "content": tool_result(call.input)} for call in calls]
follow_up = ask + [{"role": "assistant", "content": asked.content}, {"role": "user", "content": results}]
answered = client.messages.create(model=model, max_tokens=256, messages=follow_up, tools=tools)
check(text_of(answered), f"tools: no text after the results: {answered}")
tooled = {
    "calls": [{"id": call.id, "name": call.name, "input": call.input} for call in calls],
    "usage": usage_of("tool call", asked),
    "answer": text_of(answered),
}

# A streamed tool call, its input assembled by the SDK from the JSON pieces.
with client.messages.stream(model=model, max_tokens=256, messages=ask, tools=tools) as stream:
    final = stream.get_final_message()
calls = [block for block in final.content if block.type == "tool_use"]
check(final.stop_reason == "tool_use", f"streamed tools: stop_reason {final.stop_reason!r}, want tool_use")
check(calls and all(call.id and isinstance(call.input, dict) for call in calls), f"streamed tools: {final}")
stream_tools = {"calls": [{"id": call.id, "name": call.name, "input": call.input} for call in calls],
                "usage": usage_of("streamed tool call", final)}

finish({"answer": answer, "stream": streamed, "tools": tooled, "stream_tools": stream_tools})
