// The benchmark's reference point: a Node relay written the way its users would write one, with
// node:http, the official openai package and the same events and path as the service. Not part of the product.
// Run: node bench/node_relay/relay.mjs PORT   (OPENAI_BASE_URL, OPENAI_API_KEY and CHAT_MODEL from the environment)
import { randomUUID } from "node:crypto";
import http from "node:http";
import OpenAI from "openai";

const port = Number(process.argv[2] ?? 8080);
const model = process.env.CHAT_MODEL ?? "bench-model";
const client = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.OPENAI_API_KEY ?? "bench", maxRetries: 2 });

async function readJson(request) {
  let raw = "";
  for await (const part of request) raw += part;
  return JSON.parse(raw);
}

async function relay(request, response) {
  let body;
  try {
    body = await readJson(request);
  } catch {
    response.writeHead(400, { "Content-Type": "application/json" });
    response.end(JSON.stringify({ error: { code: "invalid_request", message: "The body is not valid JSON." } }));
    return;
  }
  const streamId = randomUUID().replaceAll("-", "");
  const conversationId = body.conversationId ?? randomUUID();
  const abort = new AbortController();
  response.on("close", () => abort.abort());
  let sequence = 0;
  const send = (event) => response.write(`id: ${streamId}:${sequence++}\ndata: ${JSON.stringify(event)}\n\n`);
  try {
    const stream = await client.chat.completions.create(
      { model, messages: [{ role: "user", content: body.message }], stream: true, stream_options: { include_usage: true } },
      { signal: abort.signal },
    );
    response.writeHead(200, { "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache" });
    send({ type: "metadata", streamId, conversationId, messageId: randomUUID(), model });
    let finishReason = "stop";
    let usage = null;
    for await (const chunk of stream) {
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) send({ type: "token", content: choice.delta.content });
      if (choice?.finish_reason) finishReason = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    const prompt = usage?.prompt_tokens ?? 0;
    const completion = usage?.completion_tokens ?? 0;
    send({ type: "done", finishReason, usage: { promptTokens: prompt, completionTokens: completion, totalTokens: prompt + completion } });
    response.end();
  } catch (error) {
    if (abort.signal.aborted) return;
    if (!response.headersSent) response.writeHead(200, { "Content-Type": "text/event-stream; charset=utf-8" });
    send({ type: "error", error: { code: "upstream_unavailable", message: String(error?.message ?? error), retryable: true } });
    response.end();
  }
}

const server = http.createServer((request, response) => {
  if (request.method === "GET" && request.url === "/healthz") {
    response.end("ok");
  } else if (request.method === "POST" && request.url === "/api/v1/ai/chat/stream") {
    relay(request, response);
  } else {
    response.writeHead(404);
    response.end();
  }
});
server.keepAliveTimeout = 65_000;
server.listen(port, "127.0.0.1");
