"""The official Google GenAI SDK against keyrelay's Gemini API: an answer,
a stream (`generate_content_stream`, its chunks joined), a function call
round trip (results sent back with the call's name and id), usage checked
in each. See common.py."""

import json

from google import genai
from google.genai import types

from common import (QUESTION, TOOL_DESCRIPTION, TOOL_NAME, TOOL_PARAMETERS, check, check_usage, finish, setting,
                    tool_result)

client = genai.Client(api_key=setting("KEYRELAY_API_KEY"),
                      http_options=types.HttpOptions(base_url=setting("KEYRELAY_BASE_URL"), timeout=20_000))
model = setting("SDK_MODEL")


def usage_of(what, response):
    usage = response.usage_metadata
    check(usage is not None, f"{what}: no usage_metadata in {response}")
    return check_usage(what, usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count)


# A plain answer.
response = client.models.generate_content(model=model, contents=QUESTION)
check(response.text, f"answer: no text: {response}")
finish_reason = response.candidates[0].finish_reason
answer = {"text": response.text, "finish_reason": finish_reason.name, "usage": usage_of("answer", response)}

# A stream: the chunks' text joined; usage and the finish come with the last chunk.
chunks = list(client.models.generate_content_stream(model=model, contents=QUESTION))
check(len(chunks) > 1, f"stream: {len(chunks)} chunks, want several")
text = "".join(chunk.text or "" for chunk in chunks)
check(text, "stream: no text")
last = chunks[-1]
check(last.candidates and last.candidates[0].finish_reason, f"stream: the last chunk has no finish: {last}")
streamed = {"text": text, "finish_reason": last.candidates[0].finish_reason.name, "usage": usage_of("stream", last)}

# A function call round trip: one function response per call, with its name and id.
declaration = types.FunctionDeclaration(name=TOOL_NAME, description=TOOL_DESCRIPTION,
                                        parameters_json_schema=TOOL_PARAMETERS)
config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[declaration])])
ask = [types.Content(role="user", parts=[types.Part(text=QUESTION)])]
asked = client.models.generate_content(model=model, contents=ask, config=config)
calls = asked.function_calls or []
check(calls and all(call.name for call in calls), f"tools: no function call with a name: {asked}")
check(all(isinstance(call.args, dict) for call in calls), f"tools: args not an object: {asked}")
results = [types.Part(function_response=types.FunctionResponse(id=call.id, name=call.name,
                                                               response=json.loads(tool_result(call.args))))
           for call in calls]
history = ask + [asked.candidates[0].content, types.Content(role="user", parts=results)]
answered = client.models.generate_content(model=model, contents=history, config=config)
check(answered.text, f"tools: no text after the results: {answered}")
tooled = {
    "calls": [{"id": call.id, "name": call.name, "input": call.args} for call in calls],
    "usage": usage_of("tool call", asked),
    "answer": answered.text,
}

# A streamed function call: the calls of every chunk, usage from the last.
chunks = list(client.models.generate_content_stream(model=model, contents=ask, config=config))
calls = [call for chunk in chunks for call in chunk.function_calls or []]
check(calls and all(call.name and isinstance(call.args, dict) for call in calls), f"streamed tools: {chunks}")
stream_tools = {"calls": [{"id": call.id, "name": call.name, "input": call.args} for call in calls],
                "usage": usage_of("streamed tool call", chunks[-1])}

finish({"answer": answer, "stream": streamed, "tools": tooled, "stream_tools": stream_tools})
