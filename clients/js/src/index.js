// wsq-client: the browser and Node client of a wsq gateway (protocol/README.md, "WebSocket frames").
// Plain ES module, no dependencies, no build step; the types are in index.d.ts.
//
// One socket at a time. Its whole life goes through #openSocket() and #onSocketClosed(); a
// session resume (protocol/README.md, "Session resume") is a reconnect whose URL carries the
// resume token and the last `seq` seen, and whose `$connected` says what was kept.

export const VERSION = "0.1.0";

/** Client actions: 1-64 characters of letters, digits and `_ . : -`, or the system's `$ping` and `$history`. */
const ACTION = /^[A-Za-z0-9_.:-]{1,64}$/;

/** Server `$error` codes whose frame was certainly not run: sending it again is safe. */
const NOT_RUN_CODES = new Set(["unavailable", "overloaded", "rate_limited", "no_workers", "not_taken"]);

/** Close codes after which the client reconnects by default (docs: clients/js/README.md, "Close codes"). */
export const RECONNECT_CODES = Object.freeze([1001, 1005, 1006, 1009, 1011, 1012, 1013, 1014, 1015, 3008, 3011]);

/** The ends of an open socket after which the gateway keeps (parks) the session for a resume. */
const PARKED_CODES = new Set([1006, 1011, 1012, 1014, 3008]);

/** The gateway's close code for a socket whose session another socket resumed (took over). */
const TAKEN_OVER = 3012;

const DEFAULTS = {
  requestTimeoutMs: 10_000,
  maxFrameBytes: 65_536, // the gateway's WSQ_MAX_MESSAGE_BYTES default: a larger frame closes the socket (1009)
  reconnect: { baseMs: 500, maxMs: 30_000, maxAttempts: Infinity, stableMs: 5_000 },
  queue: { maxRequests: 100, maxSends: 100 },
  heartbeat: { intervalMs: 30_000, timeoutMs: 10_000 },
  connectTimeoutMs: 15_000,
};

/**
 * Every failure the client reports: a server `$error` (its `code` as sent) or one of the
 * client's own codes: `timeout`, `connection_lost`, `closed`, `queue_full`, `not_connected`,
 * `aborted`, `token`, `socket`.
 */
export class WsqError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{sent?: boolean, action?: string, cause?: unknown}} [details]
   */
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "WsqError";
    this.code = code;
    /** Whether the frame left this client (false: the gateway never saw it). */
    this.sent = details.sent ?? false;
    this.action = details.action;
  }

  /** The frame certainly did not run: sending it again cannot run it twice. */
  get retryable() {
    return NOT_RUN_CODES.has(this.code) || (!this.sent && CLIENT_CODES.has(this.code));
  }

  /** The frame was sent and no answer came: the server may or may not have run it. */
  get outcomeUnknown() {
    return this.sent && (this.code === "connection_lost" || this.code === "timeout" || this.code === "aborted");
  }
}

const CLIENT_CODES = new Set([
  "timeout",
  "connection_lost",
  "closed",
  "queue_full",
  "not_connected",
  "aborted",
  "too_large",
]);

/**
 * Whether a socket closed with `code` is opened again, by default. 1000 (a normal close, e.g.
 * a publisher's `disconnect()`), 1008 (the user's connection limit), protocol errors (1002,
 * 1003, 1007, 1010) and application codes 3000-4999 other than wsq's 3008 and 3011 stop the
 * client: reconnecting would be refused again, or undo what the server decided. (1009, a frame
 * too large, reconnects: that frame is never sent again, so it cannot close the next socket.)
 * @param {{code: number, reason: string, opened: boolean}} info
 */
export function defaultShouldReconnect(info) {
  return RECONNECT_CODES.includes(info.code);
}

/**
 * Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): a random delay in
 * [0, min(maxMs, baseMs * 2^(attempt-1))), attempt counting from 1.
 * @param {number} attempt @param {number} baseMs @param {number} maxMs @param {() => number} random
 */
export function backoffDelay(attempt, baseMs, maxMs, random = Math.random) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt - 1, 52));
  return Math.floor(random() * ceiling);
}

/** Ids unique per client: a random prefix (so two tabs' logs never mix) and a counter. */
function idGenerator() {
  const bytes = new Uint8Array(6);
  globalThis.crypto.getRandomValues(bytes);
  const prefix = Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("");
  let counter = 0;
  return () => `${prefix}-${(++counter).toString(36)}`; // at most 12 + 1 + 11 characters
}

/**
 * The gateway's URL as a ws:// or wss:// string: in a browser it may be relative to the page
 * ("/ws"), and http(s):// becomes ws(s)://. A malformed one throws a TypeError here, at once.
 */
function resolveUrl(url) {
  const base = globalThis.location?.href;
  const resolved = base === undefined ? new URL(url) : new URL(url, base);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  if (resolved.protocol !== "ws:" && resolved.protocol !== "wss:") {
    throw new TypeError(`not a WebSocket URL: ${resolved}`);
  }
  return resolved.toString();
}

function reportListenerError(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else console.error("wsq-client: a listener threw", err);
}

const realClock = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle),
  now: () => Date.now(),
};

export class WsqClient {
  // ---- configuration
  #url;
  #getToken;
  #WebSocket;
  #requestTimeoutMs;
  #maxFrameBytes;
  #reconnect;
  #queue;
  #heartbeat;
  #shouldReconnect;
  #resume;
  #clock;
  #random;
  #nextId;

  // ---- state
  /** @type {"idle" | "connecting" | "open" | "reconnecting" | "closed"} */
  #state = "idle";
  #socket = null;
  #attempt = 0; // attempts since the last stable connection
  #closing = false; // close() was called: no reconnect
  #generation = 0; // one per #openSocket(): a late getToken() answer for an old attempt is ignored
  #connectionId = null;
  #userId = null;
  #retryTimer = null;
  #stableTimer = null;
  #heartbeatTimer = null;
  #connectTimer = null;
  #connectTimeoutMs;
  #lastReceived = 0;
  // ---- session resume (only with a resume_token from $connected, and options.resume)
  #resumeToken = null; // the session's key; null: no session to resume
  #lastSeq = 0; // the last `seq` handled
  #seqUnknown = false; // after a resume that was not recovered: the next seq is taken as it comes
  #resuming = false; // the socket being opened asks for a resume (?resume=&after=)
  /** sockets given up without a close frame (a close would end the session), still open */
  #abandoned = new Set();
  /** frames waiting for a connection, in call order: {kind: "request"|"send", frame, req?} */
  #outbox = [];
  /** requests written to a socket and not answered yet, by id (the lost socket's too, while resuming) */
  #pending = new Map();
  #listeners = new Map();
  #waiters = []; // connect() promises

  /**
   * @param {string | URL} url the gateway's WebSocket URL, e.g. wss://example.com/ws
   * @param {import("./index.js").WsqClientOptions} [options]
   */
  constructor(url, options = {}) {
    this.#url = resolveUrl(url);
    const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketClass !== "function") {
      throw new TypeError(
        "no WebSocket: pass one as the WebSocket option (Node 20: `import { WebSocket } from \"ws\"`)",
      );
    }
    this.#WebSocket = WebSocketClass;
    if (options.token !== undefined && options.getToken !== undefined) {
      throw new TypeError("give token or getToken, not both");
    }
    const token = options.token;
    this.#getToken = options.getToken ?? (token === undefined ? null : () => token);
    this.#requestTimeoutMs = options.requestTimeoutMs ?? DEFAULTS.requestTimeoutMs;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
    this.#maxFrameBytes = options.maxFrameBytes ?? DEFAULTS.maxFrameBytes;
    this.#reconnect = options.reconnect === false ? null : { ...DEFAULTS.reconnect, ...options.reconnect };
    this.#queue = { ...DEFAULTS.queue, ...options.queue };
    this.#heartbeat = options.heartbeat === false ? null : { ...DEFAULTS.heartbeat, ...options.heartbeat };
    this.#shouldReconnect = options.shouldReconnect ?? defaultShouldReconnect;
    this.#resume = options.resume !== false;
    this.#clock = { ...realClock, ...options.clock };
    this.#random = options.random ?? Math.random;
    this.#nextId = options.idGenerator ?? idGenerator();
    // In a microtask, so that listeners added right after `new` see the first `$connecting`.
    if (options.autoConnect !== false) {
      this.#state = "connecting"; // requests and sends queue from now on
      queueMicrotask(() => {
        if (this.#state === "connecting" && this.#generation === 0) this.#openSocket();
      });
    }
  }

  /** "idle" | "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this.#state;
  }

  /** The current connection's id from `$connected`, null while not open. */
  get connectionId() {
    return this.#connectionId;
  }

  /** The current connection's user id from `$connected` (null when anonymous or not open). */
  get userId() {
    return this.#userId;
  }

  get url() {
    return this.#url;
  }

  /**
   * Opens the connection (when not already opening or open; also after close()), and
   * resolves once it is open; rejects when the client closes for good first.
   * @returns {Promise<void>}
   */
  connect() {
    if (this.#state === "open") return Promise.resolve();
    const opened = new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
    if (this.#state === "idle" || this.#state === "closed") {
      this.#closing = false;
      this.#attempt = 0;
      this.#openSocket();
    }
    return opened;
  }

  /**
   * Closes the socket and stops reconnecting. Requests in flight reject with
   * `connection_lost`, queued ones with `closed`; queued sends are dropped (`$dropped`).
   * @param {number} [code] 1000 or 3000-4999
   * @param {string} [reason]
   */
  close(code = 1000, reason = "") {
    if (this.#state === "closed") return;
    this.#closing = true;
    this.#closeAbandoned(code, reason); // the session ends with them: it will not be resumed
    if (this.#state === "idle") {
      this.#onSocketClosed(code, reason, true); // settles what was queued
      return;
    }
    const socket = this.#socket;
    if (socket !== null) {
      // Settle now rather than when the close handshake ends (it may never, on a dead network).
      this.#detach(socket);
      try {
        socket.close(code, reason);
      } catch {
        // already closing
      }
    }
    this.#onSocketClosed(code, reason, true);
  }

  /**
   * Sends a frame with an id; resolves with the reply's `data`.
   * @param {string} action
   * @param {unknown} [data]
   * @param {{timeout?: number, signal?: AbortSignal}} [options]
   * @returns {Promise<any>}
   */
  request(action, data = null, options = {}) {
    if (!ACTION.test(action) && action !== "$ping" && action !== "$history") {
      return Promise.reject(new TypeError(`not a client action: ${JSON.stringify(action)}`));
    }
    const { timeout = this.#requestTimeoutMs, signal } = options;
    if (signal?.aborted) {
      return Promise.reject(new WsqError("aborted", `${action}: aborted before it was sent`, { action }));
    }
    if (this.#state === "closed") {
      return Promise.reject(new WsqError("closed", `${action}: the client is closed`, { action }));
    }
    const id = this.#nextId();
    let frame;
    try {
      frame = this.#encode({ action, data: data === undefined ? null : data, id });
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      const req = { id, action, frame, sent: false, timer: null, signal, onAbort: null, resolve, reject };
      req.settle = (err, value) => {
        if (req.timer !== null) this.#clock.clearTimeout(req.timer);
        if (req.onAbort !== null) signal.removeEventListener("abort", req.onAbort);
        this.#pending.delete(id);
        const queued = this.#outbox.findIndex((item) => item.req === req);
        if (queued !== -1) this.#outbox.splice(queued, 1);
        if (err) reject(err);
        else resolve(value);
      };
      if (this.#state !== "open") {
        const queued = this.#outbox.filter((item) => item.kind === "request").length;
        if (this.#queue.maxRequests <= 0) {
          reject(new WsqError("not_connected", `${action}: not connected`, { action }));
          return;
        }
        if (queued >= this.#queue.maxRequests) {
          reject(new WsqError("queue_full", `${action}: ${queued} requests already wait for the connection`, { action }));
          return;
        }
      }
      if (Number.isFinite(timeout)) {
        req.timer = this.#clock.setTimeout(() => {
          const how = req.sent ? "no answer" : "not connected";
          req.settle(new WsqError("timeout", `${action}: ${how} within ${timeout} ms`, { sent: req.sent, action }));
        }, timeout);
      }
      if (signal) {
        req.onAbort = () => req.settle(new WsqError("aborted", `${action}: aborted`, { sent: req.sent, action }));
        signal.addEventListener("abort", req.onAbort, { once: true });
      }
      if (this.#state === "open") this.#write(req);
      else this.#outbox.push({ kind: "request", req });
    });
  }

  /**
   * Sends a frame without an id (no reply; a failure comes as a `$error` event). While not
   * connected it is queued (up to queue.maxSends) or dropped with a `$dropped` event.
   * @param {string} action
   * @param {unknown} [data]
   * @returns {boolean} false when dropped
   */
  send(action, data = null) {
    if (!ACTION.test(action)) throw new TypeError(`not a client action: ${JSON.stringify(action)}`);
    let frame;
    try {
      frame = this.#encode({ action, data: data === undefined ? null : data });
    } catch (err) {
      if (!(err instanceof WsqError)) throw err; // not JSON: a bug, thrown at once
      this.#emit("$dropped", { action, data, reason: "too_large" });
      return false;
    }
    if (this.#state === "open") {
      this.#socket.send(frame);
      return true;
    }
    const queued = this.#outbox.filter((item) => item.kind === "send").length;
    if (this.#state === "closed" || queued >= this.#queue.maxSends) {
      const reason = this.#state === "closed" ? "closed" : "queue_full";
      this.#emit("$dropped", { action, data, reason });
      return false;
    }
    this.#outbox.push({ kind: "send", action, data, frame });
    return true;
  }

  /** The frame's JSON; a WsqError too_large when it has more UTF-8 bytes than maxFrameBytes. */
  #encode(frame) {
    const text = JSON.stringify(frame);
    // A string has at most 3 UTF-8 bytes per UTF-16 unit: count only when it may be too long.
    if (text.length * 3 > this.#maxFrameBytes && new TextEncoder().encode(text).length > this.#maxFrameBytes) {
      throw new WsqError("too_large", `${frame.action}: the frame is over ${this.#maxFrameBytes} bytes`, {
        action: frame.action,
      });
    }
    return text;
  }

  /**
   * Sends `$ping` (answered by the gateway itself); resolves with the round trip in ms.
   * @param {{timeout?: number, signal?: AbortSignal}} [options]
   */
  async ping(options = {}) {
    const start = this.#clock.now();
    await this.request("$ping", null, options);
    return this.#clock.now() - start;
  }

  /**
   * Reads a page of a group's history (pushes sent with `history=True`), answered by the
   * gateway itself, to members of the group only (else a WsqError `not_member`). Without
   * `since`, the newest `limit` messages; with `since` (a message's `offset`), those after it;
   * oldest first either way. Resolves with `{messages: [{offset, action, data, ts}], complete, gap}`.
   * @param {string} group
   * @param {{since?: string | null, limit?: number, timeout?: number, signal?: AbortSignal}} [options]
   */
  history(group, options = {}) {
    const { since = null, limit, ...requestOptions } = options;
    const data = { group, since };
    if (limit !== undefined) data.limit = limit;
    return this.request("$history", data, requestOptions);
  }

  /**
   * Listens to pushes of `action` (fn(data, action)), to every push ("*"), or to the client's
   * own events: $connecting, $open, $closed, $reconnecting, $error, $dropped.
   * @returns {() => void} removes the listener
   */
  on(name, fn) {
    if (typeof fn !== "function") throw new TypeError("on(name, fn): fn must be a function");
    let set = this.#listeners.get(name);
    if (set === undefined) this.#listeners.set(name, (set = new Set()));
    const entry = { fn };
    set.add(entry);
    return () => this.#remove(name, entry);
  }

  /** Removes a listener added with on(name, fn) (every registration of that fn). */
  off(name, fn) {
    for (const entry of this.#listeners.get(name) ?? []) {
      if (entry.fn === fn) this.#remove(name, entry);
    }
  }

  #remove(name, entry) {
    const set = this.#listeners.get(name);
    if (set === undefined) return;
    set.delete(entry);
    if (set.size === 0) this.#listeners.delete(name);
  }

  #emit(name, payload, action) {
    const set = this.#listeners.get(name);
    if (set === undefined) return;
    for (const entry of [...set]) {
      if (!set.has(entry)) continue; // removed by an earlier listener of this round
      try {
        entry.fn(payload, action);
      } catch (err) {
        reportListenerError(err);
      }
    }
  }

  // ---- the socket's life ---------------------------------------------------------------

  async #openSocket() {
    const generation = ++this.#generation;
    this.#state = "connecting";
    this.#emit("$connecting", { attempt: this.#attempt });
    if (generation !== this.#generation || this.#state !== "connecting") return; // a listener closed it
    let token = null;
    if (this.#getToken !== null) {
      try {
        token = await this.#getToken(); // per attempt: a JWT expires, the next one is fresh
      } catch (err) {
        if (generation !== this.#generation || this.#state !== "connecting") return; // closed meanwhile
        this.#emit("$error", new WsqError("token", `getToken failed: ${err}`, { cause: err }));
        if (generation !== this.#generation || this.#state !== "connecting") return;
        this.#onSocketClosed(1006, "getToken failed", false);
        return;
      }
      if (generation !== this.#generation || this.#state !== "connecting") return;
      if (token === null || token === undefined) {
        this.#closing = true; // the application says: no session, stop
        this.#onSocketClosed(1000, "no token", false);
        return;
      }
    }
    // A session to resume (a socket lost, a frame missed): its token and the last seq seen.
    this.#resuming = this.#resumeToken !== null;
    let url = this.#url;
    if (token !== null || this.#resuming) {
      const withParams = new URL(url);
      if (token !== null) withParams.searchParams.set("token", token);
      if (this.#resuming) {
        withParams.searchParams.set("resume", this.#resumeToken);
        withParams.searchParams.set("after", String(this.#lastSeq));
      }
      url = withParams.toString();
    }
    let socket;
    try {
      socket = new this.#WebSocket(url);
    } catch (err) {
      this.#emit("$error", new WsqError("socket", `cannot open ${this.#url}: ${err}`, { cause: err }));
      if (generation !== this.#generation || this.#state !== "connecting") return;
      this.#closing = true; // a URL the WebSocket refuses will not get better
      this.#onSocketClosed(1006, "bad URL", false);
      return;
    }
    this.#socket = socket;
    socket.onmessage = (event) => this.#socket === socket && this.#onMessage(event.data);
    socket.onclose = (event) => {
      if (this.#socket !== socket) return;
      this.#detach(socket);
      this.#onSocketClosed(event.code, event.reason ?? "", false);
    };
    socket.onerror = () => {}; // a close event follows, with what is known
    // No $connected in time: the attempt failed. Some WebSockets (Node 20's) never report a
    // TCP connection closed during the handshake; without this the client would wait for ever.
    this.#connectTimer = this.#clock.setTimeout(() => {
      this.#connectTimer = null;
      if (this.#socket !== socket || this.#state !== "connecting") return;
      this.#detach(socket);
      try {
        socket.close();
      } catch {
        // already closing
      }
      this.#onSocketClosed(1006, "connect timeout", false);
    }, this.#connectTimeoutMs);
  }

  #detach(socket) {
    socket.onmessage = socket.onclose = socket.onerror = null;
    if (this.#socket === socket) this.#socket = null;
  }

  /**
   * Gives a socket up without closing it: a close frame would end the session the next socket
   * resumes. The gateway closes it (3012) once that one takes over; until then it is kept, to
   * be closed if the session is not resumed after all.
   */
  #abandon(socket) {
    this.#detach(socket);
    this.#abandoned.add(socket);
    socket.onclose = () => {
      socket.onclose = null;
      this.#abandoned.delete(socket);
    };
  }

  #closeAbandoned(code, reason) {
    for (const socket of this.#abandoned) {
      socket.onclose = null;
      try {
        socket.close(code, reason);
      } catch {
        // already closing
      }
    }
    this.#abandoned.clear();
  }

  #onOpen(data) {
    if (this.#connectTimer !== null) {
      this.#clock.clearTimeout(this.#connectTimer);
      this.#connectTimer = null;
    }
    const asked = this.#resuming;
    this.#resuming = false;
    const resumed = asked && data?.resumed === true;
    const recovered = resumed && data?.recovered === true;
    const token =
      this.#resume && this.#reconnect !== null && typeof data?.resume_token === "string" ? data.resume_token : null;
    if (resumed) {
      // Same connection; its numbering goes on. Not recovered: frames were lost, and the next
      // seq is above the last one seen by more than one.
      if (token !== null) this.#resumeToken = token;
      if (!recovered) this.#seqUnknown = true;
    } else {
      // A new connection (or a gateway without resume: no token, no seq): numbering from 1.
      this.#resumeToken = token;
      this.#lastSeq = 0;
      this.#seqUnknown = false;
      this.#closeAbandoned(1000, "");
    }
    if (!recovered) {
      // Requests sent on the lost socket: their answers are not coming.
      for (const req of [...this.#pending.values()]) {
        req.settle(
          new WsqError(
            "connection_lost",
            `${req.action}: the connection was lost before the answer came, and ${
              resumed ? "frames sent meanwhile were not kept" : "its session was not resumed"
            }: it may or may not have run`,
            { sent: true, action: req.action },
          ),
        );
      }
    }
    this.#state = "open";
    this.#connectionId = typeof data?.connection_id === "string" ? data.connection_id : null;
    this.#userId = typeof data?.user_id === "string" ? data.user_id : null;
    this.#lastReceived = this.#clock.now();
    if (this.#reconnect !== null) {
      this.#stableTimer = this.#clock.setTimeout(() => {
        this.#stableTimer = null;
        this.#attempt = 0;
      }, this.#reconnect.stableMs);
    }
    this.#scheduleHeartbeat(this.#heartbeat?.intervalMs);
    // Unknown fields of $connected are ignored (a later protocol may add some).
    this.#emit("$open", { connectionId: this.#connectionId, userId: this.#userId, data, resumed, recovered });
    for (const waiter of this.#waiters.splice(0)) waiter.resolve();
    // Flush in call order; a listener of $open may have closed the socket already.
    while (this.#outbox.length > 0 && this.#state === "open") {
      const item = this.#outbox.shift();
      if (item.kind === "request") this.#write(item.req);
      else this.#socket.send(item.frame);
    }
  }

  #write(req) {
    req.sent = true;
    this.#pending.set(req.id, req);
    this.#socket.send(req.frame);
  }

  #onMessage(raw) {
    this.#lastReceived = this.#clock.now();
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      this.#emit("$error", new WsqError("invalid_server_frame", `not JSON: ${String(raw).slice(0, 100)}`));
      return;
    }
    if (frame === null || typeof frame !== "object" || typeof frame.action !== "string") {
      this.#emit("$error", new WsqError("invalid_server_frame", `not a frame: ${String(raw).slice(0, 100)}`));
      return;
    }
    const { action, data, id } = frame;
    if (action === "$connected" && this.#state === "connecting") {
      this.#onOpen(data);
      return;
    }
    if (frame.seq !== undefined && this.#resumeToken !== null && this.#state === "open" && !this.#inSequence(frame.seq)) {
      return;
    }
    if (typeof id === "string") {
      const req = this.#pending.get(id);
      if (req === undefined) return; // the answer to a request that timed out or was aborted
      if (action === "$error") {
        const err = new WsqError(String(data?.code), String(data?.message ?? ""), { sent: true, action: req.action });
        req.settle(err);
      } else {
        req.settle(null, data);
      }
      return;
    }
    if (action === "$error") {
      // The answer to a frame without id (a send()): it was rejected or failed.
      this.#emit("$error", new WsqError(String(data?.code), String(data?.message ?? ""), { sent: true }));
      return;
    }
    if (action.startsWith("$")) return; // a system frame this client does not know: ignored
    this.#emit(action, data, action);
    this.#emit("*", data, action);
  }

  /**
   * Whether a frame numbered `seq` is handled: the next one is; a duplicate (a frame seen
   * before, replayed) is dropped; after a gap (a frame lost on the way) the socket is given up
   * and the session resumed at once, from the last frame seen.
   */
  #inSequence(seq) {
    if (!Number.isSafeInteger(seq) || seq < 1) return true; // not a number this client knows
    if (seq <= this.#lastSeq) return false;
    if (seq === this.#lastSeq + 1 || this.#seqUnknown) {
      this.#seqUnknown = false;
      this.#lastSeq = seq;
      return true;
    }
    this.#abandon(this.#socket);
    this.#onSocketClosed(1006, "missed frames", false, true);
    return false;
  }

  #onSocketClosed(code, reason, byClient, gap = false) {
    const opened = this.#state === "open";
    this.#clearTimers();
    this.#connectionId = null;
    this.#userId = null;
    this.#resuming = false;
    const info = { code, reason, opened };
    // Another socket resumed this session (with its token): reconnecting would take it back.
    const takenOver = opened && code === TAKEN_OVER && this.#resumeToken !== null;
    const retry =
      !this.#closing &&
      !byClient &&
      !takenOver &&
      this.#reconnect !== null &&
      this.#attempt < this.#reconnect.maxAttempts &&
      (gap || Boolean(this.#shouldReconnect(info)));
    // The gateway keeps the session after a lost socket (no close frame, 1011, 1012, 1014, 3008) and
    // while attempts fail; any other close of an open socket ended it.
    if (!retry || (opened && !gap && !PARKED_CODES.has(code))) this.#resumeToken = null;
    if (this.#resumeToken === null) {
      // Written to the socket, unanswered: the server may have run them. Never sent again.
      for (const req of [...this.#pending.values()]) {
        req.settle(
          new WsqError(
            "connection_lost",
            `${req.action}: the connection was lost before the answer came (code ${code}): it may or may not have run`,
            { sent: true, action: req.action },
          ),
        );
      }
    }
    if (retry) {
      this.#attempt += 1;
      const attempt = this.#attempt;
      const delayMs = gap ? 0 : backoffDelay(attempt, this.#reconnect.baseMs, this.#reconnect.maxMs, this.#random);
      const resuming = this.#resumeToken !== null;
      this.#state = "reconnecting";
      this.#emit("$closed", { code, reason, willReconnect: true });
      // A listener may have called close(): then the client is closed, and no retry is due.
      if (this.#state !== "reconnecting") return;
      this.#emit("$reconnecting", { attempt, delayMs, code, reason, resuming });
      if (this.#state !== "reconnecting") return;
      this.#retryTimer = this.#clock.setTimeout(() => {
        this.#retryTimer = null;
        this.#openSocket();
      }, delayMs);
      return;
    }
    this.#state = "closed";
    this.#closeAbandoned(1000, "");
    const closed = new WsqError("closed", `the client closed (code ${code}${reason ? `: ${reason}` : ""})`);
    const outbox = this.#outbox.splice(0);
    for (const item of outbox) {
      if (item.kind === "request") {
        const { action } = item.req;
        item.req.settle(new WsqError("closed", `${action}: ${closed.message}, not sent`, { action }));
      }
    }
    for (const waiter of this.#waiters.splice(0)) waiter.reject(closed);
    this.#emit("$closed", { code, reason, willReconnect: false });
    for (const item of outbox) {
      if (item.kind === "send") this.#emit("$dropped", { action: item.action, data: item.data, reason: "closed" });
    }
  }

  #clearTimers() {
    for (const timer of [this.#retryTimer, this.#stableTimer, this.#heartbeatTimer, this.#connectTimer]) {
      if (timer !== null) this.#clock.clearTimeout(timer);
    }
    this.#retryTimer = this.#stableTimer = this.#heartbeatTimer = this.#connectTimer = null;
  }

  // Idle detection: when nothing came for intervalMs, a `$ping` must be answered within
  // timeoutMs, else the socket is taken for dead (a cut network sends no close) and dropped.
  #scheduleHeartbeat(delayMs) {
    if (this.#heartbeat === null) return;
    this.#heartbeatTimer = this.#clock.setTimeout(() => this.#beat(), delayMs);
  }

  #beat() {
    this.#heartbeatTimer = null;
    if (this.#state !== "open") return;
    const idle = this.#clock.now() - this.#lastReceived;
    if (idle < this.#heartbeat.intervalMs) {
      this.#scheduleHeartbeat(this.#heartbeat.intervalMs - idle);
      return;
    }
    const socket = this.#socket;
    this.request("$ping", null, { timeout: this.#heartbeat.timeoutMs }).then(
      () => {
        // A $pong replayed after a resume: the new socket's $open scheduled the next beat.
        if (this.#socket === socket && this.#state === "open") this.#scheduleHeartbeat(this.#heartbeat.intervalMs);
      },
      (err) => {
        if (err.code !== "timeout" || this.#socket !== socket || socket === null) return;
        if (this.#resumeToken !== null) {
          this.#abandon(socket); // a close frame that got through would end the session
        } else {
          this.#detach(socket);
          try {
            socket.close(4000, "heartbeat timeout");
          } catch {
            // nothing to close
          }
        }
        this.#onSocketClosed(1006, "heartbeat timeout", false);
      },
    );
  }
}

/**
 * Creates a client and resolves once it is open (rejects when it closes for good first).
 * @param {string | URL} url
 * @param {import("./index.js").WsqClientOptions} [options]
 * @returns {Promise<WsqClient>}
 */
export async function connect(url, options = {}) {
  const client = new WsqClient(url, { ...options, autoConnect: false });
  await client.connect();
  return client;
}
