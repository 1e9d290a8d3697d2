// Vercel's AI SDK with its default OpenAI provider (`openai(model)` calls the Responses API), pointed at the
// gateway by base URL alone. Prints one JSON line per call for tests/clients/test_node_ai_sdk.py.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, tool, stepCountIs } from "ai";
import { z } from "zod";

const [baseURL, apiKey] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey });
const model = openai("gpt-4o-mini");
const headers = { "X-Protege-Task": "node-ai-sdk" };

const generated = await generateText({ model, system: "You are terse.", prompt: "ping", headers });
console.log(JSON.stringify({ call: "generateText", text: generated.text, finishReason: generated.finishReason,
                             usage: generated.usage, responseId: generated.response.id }));

const streamed = streamText({ model, prompt: "stream me", headers });
let text = "";
for await (const delta of streamed.textStream) text += delta;
console.log(JSON.stringify({ call: "streamText", text, finishReason: await streamed.finishReason,
                             usage: await streamed.usage }));

const withTool = await generateText({
  model, prompt: "Weather in Paris?", headers, stopWhen: stepCountIs(2),
  tools: { get_weather: tool({ description: "Weather for a city", inputSchema: z.object({ city: z.string() }),
                               execute: async ({ city }) => `18C and sunny in ${city}` }) },
});
console.log(JSON.stringify({ call: "tools", text: withTool.text, steps: withTool.steps.length,
                             toolCalls: withTool.steps[0].toolCalls.map((c) => c.toolName),
                             toolResults: withTool.steps[0].toolResults.map((r) => r.output) }));
