// The Vercel AI SDK (`ai` with `@ai-sdk/openai`'s chat model) against the local server binary,
// as a TypeScript app would use the gateway: base URL and an org API key, nothing else.
//
//   npm install --prefix tests/js && node --test tests/js

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { createOpenAI } from "@ai-sdk/openai";
import { generateText, isStepCount, jsonSchema, streamText, tool } from "ai";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
let server;
let base;

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function call(method, url, body, headers = {}) {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return [response.status, await response.json()];
}

before(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const binary = process.env.LOCAL_SERVER_BIN ?? path.join(root, "target/debug/local-server");
  const env = { ...process.env, GATEWAY_ADMIN_TOKEN: "op-token" };
  for (const key of ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"]) delete env[key];
  server = spawn(binary, ["--port", String(port)], { env, stdio: "ignore" });
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(`${base}/health`)).ok) return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error("local-server did not start");
});

after(() => server?.kill());

let key;

/** An org on the pro plan and one of its API keys, made once for every test. */
function apiKey() {
  key ??= newApiKey();
  return key;
}

async function newApiKey() {
  const credentials = { email: "vercel@example.com", password: "correct horse battery" };
  const [, registered] = await call("POST", `${base}/api/v1/auth/register`, credentials);
  const auth = { Authorization: `Bearer ${registered.access_token}` };
  const [, org] = await call("POST", `${base}/api/v1/orgs`, { name: "Vercel", slug: "vercel" }, auth);
  const [planned] = await call("PUT", `${base}/admin/orgs/${org.id}/plan`, { plan: "pro" }, {
    Authorization: "Bearer op-token",
  });
  assert.equal(planned, 200);
  const [created, key] = await call("POST", `${base}/api/v1/orgs/${org.id}/api-keys`, { name: "web" }, auth);
  assert.equal(created, 201);
  return key.key;
}

test("generateText and streamText work on every provider, and stream the same text", async () => {
  const gateway = createOpenAI({ baseURL: `${base}/v1`, apiKey: await apiKey() });
  for (const id of ["gemini-1.5-flash", "claude-3-haiku", "gpt-4o-mini"]) {
    const prompt = "Tell me about Lambda";
    const generated = await generateText({ model: gateway.chat(id), prompt, maxRetries: 0 });
    assert.ok(generated.text.length > 0, id);
    assert.equal(generated.finishReason, "stop", id);
    assert.ok(generated.usage.inputTokens > 0 && generated.usage.outputTokens > 0, id);

    const streamed = streamText({ model: gateway.chat(id), prompt, maxRetries: 0 });
    let text = "";
    let pieces = 0;
    for await (const piece of streamed.textStream) {
      text += piece;
      pieces += 1;
    }
    assert.ok(pieces > 1, `${id}: the text arrived in pieces`);
    assert.equal(text, generated.text, id);
    assert.equal((await streamed.usage).outputTokens, generated.usage.outputTokens, id);
  }
});

/** A tool the model is made to call first; its answer must reach the model's final text. */
function weatherTools(calls) {
  return {
    weather: tool({
      description: "The weather in a city",
      inputSchema: jsonSchema({
        type: "object",
        properties: { city: { type: "string" }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
        required: ["city", "unit"],
      }),
      execute: async ({ city, unit }) => {
        calls.push({ city, unit });
        return `18 degrees ${unit} in ${city}`;
      },
    }),
  };
}

/** The first step must call the tool; the next may answer. */
const callFirst = ({ stepNumber }) =>
  stepNumber === 0 ? { toolChoice: { type: "tool", toolName: "weather" } } : { toolChoice: "auto" };

test("a tool round trip (call, result, answer) works on every provider, streamed and not", async () => {
  const gateway = createOpenAI({ baseURL: `${base}/v1`, apiKey: await apiKey() });
  for (const id of ["gemini-1.5-flash", "claude-3-haiku", "gpt-4o-mini"]) {
    const calls = [];
    const generated = await generateText({
      model: gateway.chat(id),
      prompt: "What is the weather in Paris?",
      tools: weatherTools(calls),
      prepareStep: callFirst,
      stopWhen: isStepCount(2),
      maxRetries: 0,
    });
    assert.equal(generated.steps.length, 2, id);
    assert.equal(generated.steps[0].finishReason, "tool-calls", id);
    assert.equal(generated.steps[0].toolCalls[0].toolName, "weather", id);
    assert.equal(calls.length, 1, id);
    assert.equal(typeof calls[0].city, "string", id);
    assert.equal(calls[0].unit, "celsius", `${id}: an enum takes its first value`);
    assert.match(generated.text, /18 degrees celsius/, `${id}: the tool's result reached the answer`);
    assert.equal(generated.finishReason, "stop", id);

    const streamedCalls = [];
    const streamed = streamText({
      model: gateway.chat(id),
      prompt: "What is the weather in Paris?",
      tools: weatherTools(streamedCalls),
      prepareStep: callFirst,
      stopWhen: isStepCount(2),
      maxRetries: 0,
    });
    let text = "";
    for await (const piece of streamed.textStream) text += piece;
    const steps = await streamed.steps;
    assert.equal(steps.length, 2, id);
    assert.equal(steps[0].toolCalls[0].toolName, "weather", id);
    assert.deepEqual(streamedCalls, calls, `${id}: the streamed call has the same arguments`);
    assert.match(text, /18 degrees celsius/, id);
  }
});

test("a bad key is the SDK's API call error with the gateway's status", async () => {
  const gateway = createOpenAI({ baseURL: `${base}/v1`, apiKey: "sk-gw-not-a-key" });
  await assert.rejects(
    generateText({ model: gateway.chat("gpt-4o-mini"), prompt: "Hi", maxRetries: 0 }),
    (error) => error.statusCode === 401 && /Incorrect API key/.test(error.message),
  );
});
