// The browser client shown in README.md ("Streaming"), run as written against the local server
// binary: Node's fetch, ReadableStream and TextDecoderStream are the browser's own APIs.
//
//   node --test tests/js        (LOCAL_SERVER_BIN defaults to target/debug/local-server)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const readme = readFileSync(path.join(root, "README.md"), "utf8");
const source = readme.match(/```js\n([\s\S]*?)```/)?.[1];
assert.ok(source, "README.md shows a js client");
const streamChat = new Function(`${source}; return streamChat;`)();

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

async function call(method, url, body, headers = {}, form = false) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = form ? new URLSearchParams(body).toString() : JSON.stringify(body);
    init.headers["Content-Type"] = form ? "application/x-www-form-urlencoded" : "application/json";
  }
  const response = await fetch(url, init);
  return [response.status, await response.json()];
}

before(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const binary = process.env.LOCAL_SERVER_BIN ?? path.join(root, "target/debug/local-server");
  const env = { ...process.env };
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

test("the README's fetch client streams an answer and its usage", async () => {
  const credentials = { email: "web@example.com", password: "correct horse battery" };
  const [status] = await call("POST", `${base}/api/v1/auth/register`, credentials);
  assert.equal(status, 201);
  const [, login] = await call(
    "POST",
    `${base}/api/v1/auth/login`,
    { username: credentials.email, password: credentials.password },
    {},
    true,
  );
  const auth = { Authorization: `Bearer ${login.access_token}` };
  const [, org] = await call("POST", `${base}/api/v1/orgs`, { name: "Web", slug: "web" }, auth);

  const pieces = [];
  const prompt = "[sim:echo]Hello\n world  من";
  const usage = await streamChat(base, login.access_token, org.id, [{ role: "user", content: prompt }], (t) =>
    pieces.push(t),
  );
  assert.ok(pieces.length > 1, "the text arrived in pieces");
  assert.equal(pieces.join(""), "Hello\n world  من");
  assert.equal(usage.finish_reason, "stop");
  assert.equal(usage.total_tokens, usage.input_tokens + usage.output_tokens);

  // A refusal before the stream opens surfaces as the API's detail.
  await assert.rejects(
    streamChat(base, "not-a-token", org.id, [{ role: "user", content: "hi" }], () => {}),
    /Could not validate credentials/,
  );
});
