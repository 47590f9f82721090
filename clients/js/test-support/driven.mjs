// wsq-client in Node, driven line by line by a test (integration-tests/test_js_client_node.py):
//   node [--experimental-websocket] driven.mjs ws://127.0.0.1:PORT/ws [TOKEN] [OPTIONS]
// OPTIONS: JSON merged into the client's options ("random": a number gives a fixed jitter).
// Reports what the client sees on stdout, one JSON object a line:
//   {"event": "$open"|"$closed"|"$reconnecting"|"$error", ...payload}, {"event": "push", action, data},
//   {"event": "reply", "name", "ok", "value" | "code"}.
// Reads commands on stdin, one JSON object a line:
//   {"cmd": "request", "name", "action", "data", "timeout"?}: its outcome comes as a "reply";
//   {"cmd": "close"}: closes the client and exits.
import { createInterface } from "node:readline";

import { WsqClient } from "../src/index.js";

const [url, token, optionsJson] = process.argv.slice(2);
const { random, ...options } = JSON.parse(optionsJson || "{}");
const report = (doc) => process.stdout.write(`${JSON.stringify(doc)}\n`);

const client = new WsqClient(url, {
  token: token || undefined,
  requestTimeoutMs: 20_000,
  reconnect: { baseMs: 200, maxMs: 1000 },
  ...(random === undefined ? {} : { random: () => random }),
  ...options,
});
client.on("$open", ({ connectionId, userId, data, resumed, recovered }) =>
  report({ event: "$open", connectionId, userId, resumed, recovered, resumable: typeof data.resume_token === "string" }),
);
client.on("$closed", (payload) => report({ event: "$closed", ...payload }));
client.on("$reconnecting", (payload) => report({ event: "$reconnecting", ...payload }));
client.on("$error", (err) => report({ event: "$error", code: err.code, message: err.message }));
client.on("*", (data, action) => report({ event: "push", action, data }));

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  if (command.cmd === "request") {
    const { name, action, data, timeout } = command;
    client.request(action, data ?? null, timeout === undefined ? {} : { timeout }).then(
      (value) => report({ event: "reply", name, ok: true, value }),
      (err) => report({ event: "reply", name, ok: false, code: err.code, message: err.message }),
    );
  } else if (command.cmd === "close") {
    break;
  }
}
client.close();
report({ event: "exit", state: client.state });
process.stdin.destroy(); // nothing more to read: let the process end
