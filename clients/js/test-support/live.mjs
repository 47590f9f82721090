// wsq-client in Node against a real gateway and the sample worker (integration-tests/sample_app.py):
//   node [--experimental-websocket] live.mjs ws://127.0.0.1:PORT/ws
// Node 22 has a global WebSocket; Node 20 needs the flag (or the `ws` package's class as the
// WebSocket option). Prints one JSON object with what happened; integration-tests/test_js_client_node.py
// checks it.
import { connect } from "../src/index.js";

const client = await connect(process.argv[2], { requestTimeoutMs: 10_000 });
const pushes = [];
client.on("pushed", (data) => pushes.push(data));
const result = { connectionId: client.connectionId, userId: client.userId };
result.echo = await client.request("echo", { text: "héllo" });
result.pushTwice = await client.request("push_twice");
for (let i = 0; i < 100 && pushes.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 50));
result.pushes = pushes;
result.unknown = await client.request("no_such_action").catch((err) => ({ name: err.name, code: err.code }));
result.pingMs = await client.ping();
client.close();
result.state = client.state;
console.log(JSON.stringify(result));
