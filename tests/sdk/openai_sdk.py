"""The official OpenAI SDK against keyrelay's Responses API: an answer, a
stream folded by the SDK (`responses.stream` + `get_final_response`), a
tool call round trip that sends the whole conversation back (as Codex
does), usage checked in each, and with SDK_FOLLOW_UP=1 a
`previous_response_id` follow-up. See common.py."""

import json

import openai

from common import (QUESTION, TOOL_DESCRIPTION, TOOL_NAME, TOOL_PARAMETERS, check, check_strictly, check_usage,
                    finish, setting, tool_result)

client = openai.OpenAI(base_url=setting("KEYRELAY_BASE_URL"), api_key=setting("KEYRELAY_API_KEY"),
                       max_retries=0, timeout=20)
model = setting("SDK_MODEL")


def usage_of(what, response):
    usage = response.usage
    check(usage is not None, f"{what}: no usage in {response}")
    return check_usage(what, usage.input_tokens, usage.output_tokens, usage.total_tokens)


def checked(what, response):
    check(response.object == "response" and response.id, f"{what}: not a response with an id: {response}")
    check(response.status == "completed", f"{what}: status {response.status!r}, want completed")
    check_strictly(what, openai.types.responses.Response, response)
    return response


# A plain answer.
response = checked("answer", client.responses.create(model=model, input=QUESTION))
check(response.output_text, f"answer: no text: {response}")
answer = {"id": response.id, "text": response.output_text, "usage": usage_of("answer", response)}

# A stream, folded the SDK's way; the text deltas must add up to the final response.
deltas, kinds = [], []
with client.responses.stream(model=model, input=QUESTION) as stream:
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
    final = checked("stream", stream.get_final_response())
check(kinds[0] == "response.created" and kinds[-1] == "response.completed", f"stream: events {kinds}")
check(len(deltas) > 1, f"stream: {len(deltas)} text deltas, want several")
check("".join(deltas) == final.output_text, f"stream: deltas {deltas!r} != final text {final.output_text!r}")
streamed = {"id": final.id, "text": final.output_text, "usage": usage_of("stream", final)}

# A tool call round trip: the output items go back with one output per call id.
tools = [{"type": "function", "name": TOOL_NAME, "description": TOOL_DESCRIPTION, "parameters": TOOL_PARAMETERS}]
ask = [{"role": "user", "content": QUESTION}]
asked = checked("tools", client.responses.create(model=model, input=ask, tools=tools))
calls = [item for item in asked.output if item.type == "function_call"]
check(calls and all(call.call_id and call.name for call in calls), f"tools: no call with a call_id: {asked}")
arguments = [json.loads(call.arguments) for call in calls]
check(all(isinstance(args, dict) for args in arguments), f"tools: arguments not a JSON object: {asked}")
history = ask + [item.model_dump(exclude_none=True) for item in asked.output]
history += [{"type": "function_call_output", "call_id": call.call_id, "output": tool_result(args)}
            for call, args in zip(calls, arguments)]
answered = checked("tool results", client.responses.create(model=model, input=history, tools=tools))
check(answered.output_text, f"tools: no text after the results: {answered}")
tooled = {
    "calls": [{"id": call.call_id, "name": call.name, "input": args} for call, args in zip(calls, arguments)],
    "usage": usage_of("tool call", asked),
    "answer": answered.output_text,
}
# A streamed tool call, its arguments assembled from the deltas.
pieces = []
with client.responses.stream(model=model, input=ask, tools=tools) as stream:
    for event in stream:
        if event.type == "response.function_call_arguments.delta":
            pieces.append(event.delta)
    final = checked("streamed tools", stream.get_final_response())
calls = [item for item in final.output if item.type == "function_call"]
check(calls and all(call.call_id for call in calls), f"streamed tools: no call with a call_id: {final}")
check("".join(pieces) == "".join(call.arguments for call in calls), f"streamed tools: deltas {pieces!r} != {calls}")
stream_tools = {
    "calls": [{"id": call.call_id, "name": call.name, "input": json.loads(call.arguments)} for call in calls],
    "usage": usage_of("streamed tool call", final),
}
summary = {"answer": answer, "stream": streamed, "tools": tooled, "stream_tools": stream_tools}

# A follow-up on the stored first answer (OpenAI's own servers only).
if setting("SDK_FOLLOW_UP", "0") == "1":
    again = checked("follow-up", client.responses.create(model=model, input="And tomorrow?",
                                                         previous_response_id=response.id))
    check(again.id != response.id and again.output_text, f"follow-up: {again}")
    summary["follow_up"] = {"previous": response.id, "id": again.id, "text": again.output_text}

finish(summary)
