// The browser side of the wsq chat example: plain JavaScript, no build step.
//
// The wire protocol (protocol/README.md) in short:
//   - the gateway's first frame is {"action": "$connected", "data": {"connection_id": ...}};
//   - we send {"action": ..., "data": ..., "id": ...}; a frame with an id gets exactly one
//     answer with the same id: the worker's reply, or {"action": "$error", "data": {code, message}};
//   - the worker pushes frames without an id at any time (here: welcome, joined, renamed,
//     message, left).
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // ?gateway=ws://host:port/ws points the page at another gateway.
  const GATEWAY_URL = params.get("gateway") || `${scheme}://${location.hostname || "localhost"}:8000/ws`;
  const REQUEST_TIMEOUT_MS = 10000;
  const MAX_BACKOFF_MS = 15000;
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

  let socket = null;
  let connectionId = null;
  let myName = null; // sent again after a reconnect: a new connection is a new chat member
  let attempt = 0; // reconnect attempts since the last successful connection
  let nextId = 0;
  const pending = new Map(); // frame id -> {resolve, reject, timer}

  /** An `$error` answer from the gateway or the worker. */
  class WsqError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  // ---- connection -------------------------------------------------------------------

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
    const usable = state === "connected";
    ui.nameSubmit.disabled = !usable;
    ui.send.disabled = !usable;
  }

  function connect() {
    setStatus(attempt === 0 ? "connecting" : "reconnecting", `Connecting to ${GATEWAY_URL}…`);
    try {
      socket = new WebSocket(GATEWAY_URL);
    } catch (err) {
      setStatus("failed", `Bad gateway URL: ${err.message}`);
      return;
    }
    socket.addEventListener("message", (event) => onFrame(event.data));
    socket.addEventListener("close", onClose);
  }

  function onClose(event) {
    socket = null;
    connectionId = null;
    ui.connectionId.textContent = "–";
    for (const [id, req] of pending) {
      clearTimeout(req.timer);
      req.reject(new Error("the connection closed before the answer came"));
      pending.delete(id);
    }
    // Exponential backoff with jitter, so that a restarted gateway is not stormed.
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** attempt) * (0.5 + Math.random() / 2);
    attempt += 1;
    const why = { 1001: "gateway going away", 1012: "gateway restarting", 1006: "gateway unreachable" }[event.code] || `code ${event.code}`;
    setStatus("reconnecting", `Disconnected (${why}), reconnecting in ${(delay / 1000).toFixed(1)} s…`);
    setTimeout(connect, delay);
  }

  function onFrame(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      console.warn("not JSON:", raw);
      return;
    }
    const { action, data, id } = frame;

    // A frame with an id is an answer, never a push (pushes have no id, and actions other than
    // the requests'): to one of our pending requests, or to one that timed out meanwhile.
    if (id !== undefined && id !== null) {
      const req = pending.get(id);
      if (req === undefined) {
        console.debug("answer to no pending request (timed out?)", frame);
        return;
      }
      pending.delete(id);
      clearTimeout(req.timer);
      if (action === "$error") req.reject(new WsqError(data.code, data.message));
      else req.resolve(data);
      return;
    }

    switch (action) {
      case "$connected":
        onConnected(data);
        break;
      case "$error": // a rejected frame that had no id
        showNotice(`${data.code}: ${data.message}`, data.code);
        break;
      case "welcome":
        addSystem(
          data.chatting === 0
            ? "Welcome! Nobody is chatting yet: pick a name and say hello."
            : `Welcome! ${data.chatting} ${data.chatting === 1 ? "person is" : "people are"} chatting.`,
        );
        break;
      case "joined":
        addSystem(`${data.name} joined`, data.at);
        break;
      case "renamed":
        addSystem(`${data.old} is now ${data.name}`, data.at);
        break;
      case "left":
        addSystem(`${data.name} left`, data.at);
        break;
      case "message":
        addMessage(data);
        break;
      default:
        console.debug("unhandled frame", frame);
    }
  }

  function onConnected(data) {
    attempt = 0;
    connectionId = data.connection_id;
    ui.connectionId.textContent = connectionId;
    setStatus("connected", "Connected");
    if (myName !== null) setName(myName);
  }

  /** Send a frame with an id; resolves with the reply's data, rejects with a WsqError. */
  function request(action, data) {
    if (socket === null || socket.readyState !== WebSocket.OPEN || connectionId === null) {
      return Promise.reject(new Error("not connected"));
    }
    nextId += 1;
    const id = `r${nextId}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`no answer to ${action} within ${REQUEST_TIMEOUT_MS / 1000} s`));
      }, REQUEST_TIMEOUT_MS);
      pending.set(id, { resolve, reject, timer });
      socket.send(JSON.stringify({ action, data, id }));
    });
  }

  // ---- chat -----------------------------------------------------------------------------

  async function setName(name) {
    try {
      const reply = await request("set_name", { name });
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
      const reply = await request("say", { text });
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

  // ---- rendering (textContent only: chat text is never parsed as HTML) ------------------

  function describe(err) {
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

  function addMessage({ from, text, at }) {
    const item = document.createElement("li");
    item.className = "message";
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
  window.wsqChat = { request, get connectionId() { return connectionId; } };

  ui.gateway.textContent = GATEWAY_URL;
  connect();
})();
