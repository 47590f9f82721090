// A wsq publisher in another language than Python: XADDs commands (JSON files shaped as
// protocol/examples/valid/command/*.json) to a gateway's node stream, speaking RESP over a
// plain TCP socket (no npm dependencies; Node 20 has no Redis client of its own).
//
//   node publish.mjs --host 127.0.0.1 --port 6379 --stream '{wsq:3}:node:gw-1:out' \
//        [--connection <connection id>] [--maxlen 100000] FILE...
//
// Each command is written as the SDK's StreamWrite.to_node writes it:
//   XADD <stream> NOMKSTREAM MAXLEN ~ <maxlen> * field value ...
// with the fields in the file's order. --connection replaces the golden examples' connection
// id (in "to" and "exclude") with a real one. On a Redis Cluster, --host/--port must be the
// master serving the stream's slot (a MOVED reply is an error here). Prints one entry id per
// command (or "nil" when the stream does not exist: NOMKSTREAM wrote nothing); exits 1 on an
// error reply.
import { readFileSync } from "node:fs";
import net from "node:net";

const EXAMPLE_CONNECTION_ID = "gw-3f2a9c1d.q2uE4nK0m5Zr8VtY1xWb7A";

function parseArgs(argv) {
  const opts = { host: "127.0.0.1", port: 6379, stream: null, connection: null, maxlen: 100000, files: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg.startsWith("--")) {
      const value = argv[++i];
      if (value === undefined) throw new Error(`${arg} needs a value`);
      opts[arg.slice(2)] = value;
    } else {
      opts.files.push(arg);
    }
  }
  if (!opts.stream) throw new Error("--stream is required");
  return opts;
}

// A command as a RESP array of bulk strings (lengths in bytes of UTF-8).
function encode(args) {
  const parts = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = Buffer.from(String(arg), "utf8");
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from("\r\n"));
  }
  return Buffer.concat(parts);
}

// Parse one reply at `pos` of `buf`: [value, next position], or null when incomplete.
// Enough of RESP2 for XADD's replies: a bulk string, a null, an error.
function parseReply(buf, pos) {
  const end = buf.indexOf("\r\n", pos);
  if (end < 0) return null;
  const type = String.fromCharCode(buf[pos]);
  const line = buf.toString("utf8", pos + 1, end);
  if (type === "+" || type === ":") return [line, end + 2];
  if (type === "-") return [new Error(line), end + 2];
  if (type === "$") {
    const size = Number(line);
    if (size < 0) return [null, end + 2];
    if (buf.length < end + 2 + size + 2) return null;
    return [buf.toString("utf8", end + 2, end + 2 + size), end + 2 + size + 2];
  }
  if (type === "_") return [null, end + 2];
  throw new Error(`unexpected reply type ${JSON.stringify(type)}`);
}

function command(opts, file) {
  const fields = JSON.parse(readFileSync(file, "utf8"));
  const args = ["XADD", opts.stream, "NOMKSTREAM", "MAXLEN", "~", String(opts.maxlen), "*"];
  for (let [field, value] of Object.entries(fields)) {
    if (opts.connection && (field === "to" || field === "exclude") && value === EXAMPLE_CONNECTION_ID) {
      value = opts.connection;
    }
    args.push(field, value);
  }
  return args;
}

const opts = parseArgs(process.argv.slice(2));
const commands = opts.files.map((file) => command(opts, file));
const socket = net.createConnection({ host: opts.host, port: Number(opts.port) });
let pending = Buffer.alloc(0);
const replies = [];
socket.on("connect", () => {
  // Pipelined, in order: Redis runs them in order, so the gateway reads them in order.
  socket.write(Buffer.concat(commands.map(encode)));
});
socket.on("data", (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  let pos = 0;
  for (let parsed; (parsed = parseReply(pending, pos)) !== null; ) {
    replies.push(parsed[0]);
    pos = parsed[1];
  }
  pending = pending.subarray(pos);
  if (replies.length >= commands.length) socket.end();
});
socket.on("error", (err) => {
  console.error(`redis ${opts.host}:${opts.port}: ${err.message}`);
  process.exit(2);
});
socket.on("close", () => {
  if (replies.length < commands.length) {
    console.error(`connection closed after ${replies.length} of ${commands.length} replies`);
    process.exit(2);
  }
  let failed = false;
  replies.forEach((reply, i) => {
    if (reply instanceof Error) {
      console.error(`${opts.files[i]}: ${reply.message}`);
      failed = true;
    } else {
      console.log(reply === null ? "nil" : reply);
    }
  });
  process.exit(failed ? 1 : 0);
});
