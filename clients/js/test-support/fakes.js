// In-process stand-ins for the WebSocket class and the timers, so that tests drive the
// client frame by frame and millisecond by millisecond.

/** A fake clock: timers run only when the test advances time. */
export class FakeClock {
  now = () => this.time;
  time = 0;
  #timers = new Map();
  #next = 0;

  setTimeout = (fn, ms) => {
    const handle = ++this.#next;
    this.#timers.set(handle, { at: this.time + Math.max(0, ms), fn, handle });
    return handle;
  };

  clearTimeout = (handle) => {
    this.#timers.delete(handle);
  };

  /** Delays of the timers waiting now, soonest first. */
  pending() {
    return [...this.#timers.values()].map((t) => t.at - this.time).sort((a, b) => a - b);
  }

  /** Moves time forward by ms, running every timer due on the way (and the promises they settle). */
  async advance(ms) {
    await flush(); // timers that settled promises are about to set
    const until = this.time + ms;
    for (;;) {
      const due = [...this.#timers.values()].filter((t) => t.at <= until).sort((a, b) => a.at - b.at || a.handle - b.handle);
      if (due.length === 0) break;
      const timer = due[0];
      this.#timers.delete(timer.handle);
      this.time = timer.at;
      timer.fn();
      await flush();
    }
    this.time = until;
    await flush();
  }
}

/** Lets pending promise callbacks run. */
export async function flush() {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

/** A fake WebSocket class; each test gets its own (sockets are recorded on the class). */
export function fakeWebSocketClass() {
  class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;
    static instances = [];

    /** The newest socket. */
    static get last() {
      return FakeWebSocket.instances.at(-1);
    }

    constructor(url) {
      if (!/^wss?:\/\//.test(url)) throw new SyntaxError(`bad URL ${url}`);
      this.url = url;
      this.readyState = FakeWebSocket.CONNECTING;
      this.sent = []; // frames the client sent, parsed
      this.closedWith = null; // what the client passed to close()
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      FakeWebSocket.instances.push(this);
    }

    send(text) {
      if (this.readyState !== FakeWebSocket.OPEN) throw new Error("send() on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = FakeWebSocket.CLOSING;
    }

    // ---- the server's side
    /** The handshake succeeds and the gateway sends $connected. */
    accept(connectionId = `gw-test.${"A".repeat(21)}${FakeWebSocket.instances.length % 10}`, userId = null, extra = {}) {
      this.readyState = FakeWebSocket.OPEN;
      this.onopen?.({});
      this.receive({ action: "$connected", data: { connection_id: connectionId, user_id: userId, ...extra } });
    }

    receive(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }

    /** The server (or the network) closes the socket. */
    drop(code = 1006, reason = "") {
      this.readyState = FakeWebSocket.CLOSED;
      this.onerror?.({});
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }

    /** Answers the last frame the client sent that had an id. */
    reply(data, action) {
      const frame = this.sent.findLast((f) => f.id !== undefined);
      this.receive({ action: action ?? frame.action, data, id: frame.id });
    }
  }
  return FakeWebSocket;
}
