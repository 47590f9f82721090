// The browser side of the wsq chat example: UI code only. The wsq client package
// (clients/js, served at ./wsq-client/) does the protocol: request ids, timeouts, reconnecting
// with backoff, and the queue of requests made while disconnected.
//
// The worker (worker.py) answers set_name and say, and pushes welcome, joined, renamed,
// message and left.
import { WsqClient, WsqError } from "./wsq-client/index.js";

const params = new URLSearchParams(location.search);
const scheme = location.protocol === "https:" ? "wss" : "ws";
// ?gateway=ws://host:port/ws points the page at another gateway.
const GATEWAY_URL = params.get("gateway") || `${scheme}://${location.hostname || "localhost"}:8000/ws`;
const MAX_ITEMS = 500;

const el = (id) => document.getElementById(id);
const ui = {
  status: el("status"),
  gateway: el("gateway-url"),
  connectionId: el("connection-id"),
  nameForm: el("name-form"),
  name: el("name"),
  nameSubmit: el("name-submit"),
  messages: el("messages"),
  notice: el("notice"),
  sayForm: el("say-form"),
  text: el("text"),
  send: el("send"),
};

let myName = null; // sent again after a reconnect into a new connection: a new chat member
let wasOpen = false; // an $open after this one is a reconnect
const myConnections = new Set(); // this page's connection ids: its own messages carry one

const client = new WsqClient(GATEWAY_URL, { requestTimeoutMs: 10_000, reconnect: { baseMs: 500, maxMs: 15_000 } });

// ---- connection state -----------------------------------------------------------------

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
  const usable = state === "connected";
  ui.nameSubmit.disabled = !usable;
  ui.send.disabled = !usable;
}

const CLOSE_REASONS = { 1006: "connection lost", 1012: "gateway restarting", 1013: "gateway busy" };

client.on("$connecting", ({ attempt }) => {
  if (attempt === 0) setStatus("connecting", `Connecting to ${GATEWAY_URL}…`);
});

// With session resume on at the gateway (WSQ_RESUME_WINDOW_S), a reconnect goes on with the
// same connection (resumed) and, when recovered, every message sent meanwhile follows.
client.on("$open", ({ connectionId, resumed, recovered }) => {
  myConnections.add(connectionId);
  ui.connectionId.textContent = connectionId;
  if (!wasOpen) setStatus("connected", "Connected");
  else if (recovered) setStatus("connected", "Recovered: no message missed");
  else setStatus("connected", "Reconnected (some messages may be missing)");
  wasOpen = true;
  if (myName !== null && !resumed) setName(myName); // a resumed connection keeps its name
});

client.on("$closed", ({ code, reason, willReconnect }) => {
  ui.connectionId.textContent = "–";
  if (!willReconnect) setStatus("failed", `Disconnected (${reason || `code ${code}`}): reload the page to try again`);
});

client.on("$reconnecting", ({ attempt, delayMs, code }) => {
  const why = CLOSE_REASONS[code] || `code ${code}`;
  setStatus("reconnecting", `Reconnecting… (${why}; attempt ${attempt} in ${(delayMs / 1000).toFixed(1)} s)`);
});

client.on("$error", (err) => showNotice(`${err.code}: ${err.message}`, err.code));

// ---- pushes -----------------------------------------------------------------------------

client.on("welcome", ({ chatting }) =>
  addSystem(
    chatting === 0
      ? "Welcome! Nobody is chatting yet: pick a name and say hello."
      : `Welcome! ${chatting} ${chatting === 1 ? "person is" : "people are"} chatting.`,
  ),
);
client.on("joined", (data) => addSystem(`${data.name} joined`, data.at));
client.on("renamed", (data) => addSystem(`${data.old} is now ${data.name}`, data.at));
client.on("left", (data) => addSystem(`${data.name} left`, data.at));
client.on("message", addMessage);

// ---- chat ---------------------------------------------------------------------------------

async function setName(name) {
  try {
    const reply = await client.request("set_name", { name });
    if (!reply.ok) return showNotice(reply.error, "invalid_input");
    myName = reply.name;
    ui.name.value = reply.name;
    ui.nameSubmit.textContent = "Change name";
    ui.text.placeholder = `Say something as ${reply.name}`;
    clearNotice();
  } catch (err) {
    showNotice(describe(err), err.code);
  }
}

async function say(text) {
  try {
    const reply = await client.request("say", { text });
    if (!reply.ok) return showNotice(reply.error, "invalid_input");
    ui.text.value = "";
    clearNotice();
  } catch (err) {
    showNotice(describe(err), err.code);
  }
}

ui.nameForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setName(ui.name.value);
});

ui.sayForm.addEventListener("submit", (event) => {
  event.preventDefault();
  say(ui.text.value);
  ui.text.focus();
});

// ---- rendering (textContent only: chat text is never parsed as HTML) ----------------------

function describe(err) {
  if (err instanceof WsqError && err.outcomeUnknown) return `${err.message} (check before sending it again)`;
  return err instanceof WsqError ? `${err.code}: ${err.message}` : err.message;
}

function showNotice(text, code) {
  ui.notice.textContent = text;
  ui.notice.dataset.code = code || "error";
  ui.notice.hidden = false;
}

function clearNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = "";
  delete ui.notice.dataset.code;
}

function timeElement(iso) {
  const time = document.createElement("time");
  const when = iso ? new Date(iso) : new Date();
  time.dateTime = when.toISOString();
  time.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return time;
}

function append(item) {
  const list = ui.messages;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(item);
  while (list.children.length > MAX_ITEMS) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function addMessage({ from, connection_id: sender, text, at }) {
  const item = document.createElement("li");
  item.className = myConnections.has(sender) ? "message own" : "message";
  item.dataset.kind = "message";
  const who = document.createElement("span");
  who.className = "from";
  who.textContent = from;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(timeElement(at), who, body);
  append(item);
}

function addSystem(text, at) {
  const item = document.createElement("li");
  item.className = "system";
  item.dataset.kind = "system";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(timeElement(at), body);
  append(item);
}

// For the browser console and the tests: wsqChat.request("say", {text: "hi"}).
window.wsqChat = {
  client,
  request: (action, data) => client.request(action, data),
  get connectionId() {
    return client.connectionId;
  },
};

ui.gateway.textContent = GATEWAY_URL;

// ---- live stats (the gateway's HTTP server API, through run.py's /stats.json) ----------

const STATS_EVERY_MS = 2000;

async function refreshStats() {
  let stats;
  try {
    const resp = await fetch("stats.json", { cache: "no-store" });
    if (resp.status === 404) return; // no stats where the page is served (nginx, --page-only)
    stats = resp.ok ? await resp.json() : null;
  } catch {
    stats = null;
  }
  el("stats").hidden = false;
  if (stats === null) {
    el("stats-gateways").textContent = "unavailable";
  } else {
    const connections = stats.gateways.reduce((sum, gateway) => sum + gateway.connections, 0);
    el("stats-gateways").textContent = String(stats.gateways.length);
    el("stats-connections").textContent = String(connections);
    el("stats-workers").textContent = String(stats.workers.live.length);
    el("stats-backlog").textContent = `${stats.inbound.length} (${stats.inbound.pending} in progress)`;
    el("stats-dead").textContent = String(stats.dead_letters);
  }
  setTimeout(refreshStats, STATS_EVERY_MS);
}

refreshStats();
