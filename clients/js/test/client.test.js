import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { WsqClient, WsqError, backoffDelay, connect, defaultShouldReconnect } from "../src/index.js";
import { FakeClock, fakeWebSocketClass, flush } from "../test-support/fakes.js";

const URL = "ws://gateway.test/ws";

/** A client on a fake socket class and clock, with every client event recorded in order. */
function setup(options = {}) {
  const clock = new FakeClock();
  const WebSocket = fakeWebSocketClass();
  // Fake sockets stay connecting until a test accepts them: no connect timeout unless a test sets one.
  const client = new WsqClient(options.url ?? URL, {
    WebSocket,
    clock,
    random: () => 0.5,
    connectTimeoutMs: 3_600_000,
    ...options,
  });
  const events = [];
  for (const name of ["$connecting", "$open", "$closed", "$reconnecting", "$error", "$dropped"]) {
    client.on(name, (payload) => events.push([name, payload]));
  }
  const names = () => events.map(([name]) => name);
  return { clock, WebSocket, client, events, names };
}

async function opened(options) {
  const t = setup(options);
  await flush();
  t.WebSocket.last.accept();
  return t;
}

describe("requests", () => {
  it("match replies by id, in any order", async () => {
    const { client, WebSocket } = await opened();
    const a = client.request("echo", { n: 1 });
    const b = client.request("echo", { n: 2 });
    const [fa, fb] = WebSocket.last.sent;
    assert.equal(fa.action, "echo");
    assert.deepEqual(fa.data, { n: 1 });
    assert.notEqual(fa.id, fb.id);
    WebSocket.last.receive({ action: "echo", data: "second", id: fb.id });
    WebSocket.last.receive({ action: "echo", data: "first", id: fa.id });
    assert.equal(await a, "first");
    assert.equal(await b, "second");
  });

  it("use ids unique per client, of 1-64 characters, with a random prefix", async () => {
    const { client, WebSocket } = await opened();
    const other = (await opened()).WebSocket;
    for (let i = 0; i < 50; i++) client.request("x").catch(() => {});
    const ids = WebSocket.last.sent.map((f) => f.id);
    assert.equal(new Set(ids).size, 50);
    for (const id of ids) assert.ok(id.length >= 1 && id.length <= 64, id);
    assert.equal(new Set(ids.map((id) => id.split("-")[0])).size, 1);
    const client2 = new WsqClient(URL, { WebSocket: other, autoConnect: false });
    client2.request("x").catch(() => {});
    client2.close();
    assert.notEqual(ids[0].split("-")[0], undefined);
  });

  it("send data null when none is given, and validate the action", async () => {
    const { client, WebSocket } = await opened();
    client.request("plain").catch(() => {});
    assert.equal(WebSocket.last.sent[0].data, null);
    await assert.rejects(client.request("$connected"), TypeError);
    await assert.rejects(client.request("a b"), TypeError);
    await assert.rejects(client.request("x".repeat(65)), TypeError);
    assert.throws(() => client.send("$ping"), TypeError);
  });

  it("refuse frames over maxFrameBytes before sending them, counting UTF-8 bytes", async () => {
    const { client, WebSocket, events } = await opened({ maxFrameBytes: 100 });
    const err = await client.request("echo", "é".repeat(40)).catch((e) => e); // 80 bytes of text, + the frame
    assert.equal(err.code, "too_large");
    assert.equal(err.sent, false);
    assert.equal(err.retryable, true);
    client.request("echo", "e".repeat(40)).catch(() => {}); // 40 bytes: fits
    assert.equal(client.send("echo", "é".repeat(40)), false);
    assert.deepEqual(events.at(-1), ["$dropped", { action: "echo", data: "é".repeat(40), reason: "too_large" }]);
    assert.equal(WebSocket.last.sent.length, 1);
    assert.throws(() => client.send("echo", 10n), TypeError, "not JSON: thrown");
    await assert.rejects(client.request("echo", 10n), TypeError);
  });

  it("map $error answers to WsqError with the server's code", async () => {
    const { client, WebSocket } = await opened();
    const p = client.request("nope", null);
    WebSocket.last.reply({ code: "unknown_action", message: "no handler for nope" }, "$error");
    const err = await p.catch((e) => e);
    assert.ok(err instanceof WsqError);
    assert.equal(err.code, "unknown_action");
    assert.equal(err.message, "no handler for nope");
    assert.equal(err.action, "nope");
    assert.equal(err.sent, true);
    assert.equal(err.retryable, false);
    assert.equal(err.outcomeUnknown, false);

    const q = client.request("later", null);
    WebSocket.last.reply({ code: "no_workers", message: "no worker" }, "$error");
    const busy = await q.catch((e) => e);
    assert.equal(busy.code, "no_workers");
    assert.equal(busy.retryable, true, "a frame the gateway did not queue may be sent again");
  });

  it("time out, and ignore the late answer", async () => {
    const { client, WebSocket, clock } = await opened({ requestTimeoutMs: 1000 });
    const p = client.request("slow").catch((e) => e);
    const q = client.request("slower", null, { timeout: 3000 }).catch((e) => e);
    await clock.advance(999);
    WebSocket.last.receive({ action: "other", data: 1 }); // anything else keeps it waiting
    await clock.advance(1);
    const err = await p;
    assert.equal(err.code, "timeout");
    assert.equal(err.sent, true);
    assert.equal(err.outcomeUnknown, true);
    WebSocket.last.receive({ action: "slow", data: "late", id: WebSocket.last.sent[0].id }); // ignored
    await clock.advance(2000);
    assert.equal((await q).code, "timeout");
  });

  it("can be aborted with a signal", async () => {
    const { client } = await opened();
    const controller = new AbortController();
    const p = client.request("x", null, { signal: controller.signal });
    controller.abort();
    const err = await p.catch((e) => e);
    assert.equal(err.code, "aborted");
    assert.equal(err.sent, true);
    await assert.rejects(client.request("x", null, { signal: controller.signal }), { code: "aborted", sent: false });
  });

  it("history() sends $history with the group, since and limit, and resolves with the page", async () => {
    const { client, WebSocket } = await opened();
    const p = client.history("room:1", { since: "1700000000000-0", limit: 20 });
    const sent = WebSocket.last.sent[0];
    assert.equal(sent.action, "$history");
    assert.deepEqual(sent.data, { group: "room:1", since: "1700000000000-0", limit: 20 });
    const page = { messages: [{ offset: "1700000000001-0", action: "said", data: "hi", ts: 1 }], complete: true, gap: false };
    WebSocket.last.reply(page, "$history");
    assert.deepEqual(await p, page);
    const newest = client.history("room:1");
    assert.deepEqual(WebSocket.last.sent[1].data, { group: "room:1", since: null });
    WebSocket.last.receive({ action: "$error", data: { code: "not_member", message: "no" }, id: WebSocket.last.sent[1].id });
    await assert.rejects(newest, { code: "not_member" });
  });

  it("ping() measures the round trip of $ping", async () => {
    const { client, WebSocket, clock } = await opened();
    const p = client.ping();
    assert.equal(WebSocket.last.sent[0].action, "$ping");
    await clock.advance(42);
    WebSocket.last.reply(null, "$pong");
    assert.equal(await p, 42);
  });
});

describe("pushes and listeners", () => {
  it("dispatch pushes by action, and to '*' listeners", async () => {
    const { client, WebSocket } = await opened();
    const got = [];
    const stop = client.on("news", (data, action) => got.push(["news", data, action]));
    client.on("*", (data, action) => got.push(["*", data, action]));
    WebSocket.last.receive({ action: "news", data: { n: 1 } });
    WebSocket.last.receive({ action: "other", data: 2 });
    stop();
    stop(); // twice is harmless
    WebSocket.last.receive({ action: "news", data: { n: 3 } });
    assert.deepEqual(got, [
      ["news", { n: 1 }, "news"],
      ["*", { n: 1 }, "news"],
      ["*", 2, "other"],
      ["*", { n: 3 }, "news"],
    ]);
  });

  it("off() removes a function; a throwing listener does not stop the others", async () => {
    const { client, WebSocket } = await opened();
    const seen = [];
    const reported = [];
    const original = globalThis.reportError;
    globalThis.reportError = (err) => reported.push(err.message);
    try {
      const fn = (d) => seen.push(`fn ${d}`);
      client.on("news", () => {
        throw new Error("boom");
      });
      client.on("news", fn);
      WebSocket.last.receive({ action: "news", data: 1 });
      client.off("news", fn);
      WebSocket.last.receive({ action: "news", data: 2 });
    } finally {
      globalThis.reportError = original;
    }
    assert.deepEqual(seen, ["fn 1"]);
    assert.deepEqual(reported, ["boom", "boom"]);
  });

  it("report an $error without id (the answer to a send) as a $error event", async () => {
    const { client, WebSocket, events } = await opened();
    client.send("fire", { a: 1 });
    assert.deepEqual(WebSocket.last.sent, [{ action: "fire", data: { a: 1 } }]);
    WebSocket.last.receive({ action: "$error", data: { code: "rate_limited", message: "slow down" } });
    const [name, err] = events.at(-1);
    assert.equal(name, "$error");
    assert.equal(err.code, "rate_limited");
    assert.equal(err.retryable, true);
  });

  it("take $connected's ids and ignore its unknown fields and unknown system frames", async () => {
    const t = setup();
    await flush();
    t.WebSocket.last.accept("gw-1.abcdefghijklmnopqrstuv", "ada", { resume_token: "later", recovered: true });
    assert.equal(t.client.state, "open");
    assert.equal(t.client.connectionId, "gw-1.abcdefghijklmnopqrstuv");
    assert.equal(t.client.userId, "ada");
    const open = t.events.find(([n]) => n === "$open")[1];
    assert.deepEqual(
      { connectionId: open.connectionId, userId: open.userId, resume: open.data.resume_token },
      { connectionId: "gw-1.abcdefghijklmnopqrstuv", userId: "ada", resume: "later" },
    );
    t.WebSocket.last.receive({ action: "$future", data: {} });
    t.WebSocket.last.receive("not json");
    assert.equal(t.events.at(-1)[1].code, "invalid_server_frame");
  });
});

describe("offline queue", () => {
  it("holds requests and sends made before the connection, and sends them in call order", async () => {
    const { client, WebSocket } = setup();
    const p = client.request("first", 1);
    assert.equal(client.send("second", 2), true);
    const q = client.request("third", 3);
    await flush();
    assert.deepEqual(WebSocket.last.sent, []);
    WebSocket.last.accept();
    assert.deepEqual(
      WebSocket.last.sent.map((f) => f.action),
      ["first", "second", "third"],
    );
    WebSocket.last.receive({ action: "first", data: "a", id: WebSocket.last.sent[0].id });
    WebSocket.last.receive({ action: "third", data: "c", id: WebSocket.last.sent[2].id });
    assert.deepEqual([await p, await q], ["a", "c"]);
  });

  it("bounds the queue: queue_full for requests, $dropped for sends", async () => {
    const { client, events } = setup({ queue: { maxRequests: 1, maxSends: 1 } });
    client.request("a").catch(() => {});
    await assert.rejects(client.request("b"), { code: "queue_full", sent: false, retryable: true });
    assert.equal(client.send("c"), true);
    assert.equal(client.send("d", { x: 1 }), false);
    assert.deepEqual(events.at(-1), ["$dropped", { action: "d", data: { x: 1 }, reason: "queue_full" }]);
  });

  it("rejects at once with not_connected when requests may not wait", async () => {
    const { client } = setup({ queue: { maxRequests: 0 } });
    await assert.rejects(client.request("a"), { code: "not_connected", sent: false });
  });

  it("a queued request times out unsent: retryable", async () => {
    const { client, clock, WebSocket } = setup({ requestTimeoutMs: 500 });
    const p = client.request("a").catch((e) => e);
    await clock.advance(500);
    const err = await p;
    assert.equal(err.code, "timeout");
    assert.equal(err.sent, false);
    assert.equal(err.retryable, true);
    WebSocket.last.accept();
    assert.deepEqual(WebSocket.last.sent, [], "a timed-out request is never sent");
  });

  it("rejects in-flight requests with connection_lost, never sends them again, and sends the queued ones after reconnecting", async () => {
    const { client, WebSocket, clock } = await opened();
    const inFlight = client.request("charge", { cents: 100 }).catch((e) => e);
    WebSocket.last.drop(1006);
    const err = await inFlight;
    assert.equal(err.code, "connection_lost");
    assert.equal(err.sent, true);
    assert.equal(err.outcomeUnknown, true);
    assert.equal(err.retryable, false);
    assert.match(err.message, /may or may not have run/);
    const queued = client.request("after", null, { timeout: 60_000 });
    await clock.advance(1000);
    WebSocket.last.accept();
    assert.deepEqual(
      WebSocket.last.sent.map((f) => f.action),
      ["after"],
    );
    WebSocket.last.reply("ok");
    assert.equal(await queued, "ok");
  });
});

describe("reconnect", () => {
  it("waits full-jitter delays, doubling up to the cap", async () => {
    const { WebSocket, clock, events } = await opened({ reconnect: { baseMs: 100, maxMs: 1000 } });
    const delays = [];
    for (let i = 0; i < 6; i++) {
      const before = WebSocket.instances.length;
      WebSocket.last.drop(1006);
      const [, info] = events.findLast(([n]) => n === "$reconnecting");
      delays.push(info.delayMs);
      await clock.advance(info.delayMs - 1);
      assert.equal(WebSocket.instances.length, before, "no socket before the delay");
      await clock.advance(1);
      assert.equal(WebSocket.instances.length, before + 1);
    }
    // random() = 0.5: half of min(1000, 100 * 2^(n-1))
    assert.deepEqual(delays, [50, 100, 200, 400, 500, 500]);
  });

  it("computes full jitter as random(0, min(cap, base * 2^(attempt-1)))", () => {
    assert.equal(backoffDelay(1, 500, 30_000, () => 0), 0);
    assert.equal(backoffDelay(1, 500, 30_000, () => 0.999), 499);
    assert.equal(backoffDelay(4, 500, 30_000, () => 0.5), 2000);
    assert.equal(backoffDelay(50, 500, 30_000, () => 0.5), 15_000);
    assert.equal(backoffDelay(5000, 500, 30_000, () => 0.5), 15_000);
  });

  it("resets the attempts after a stable connection, not after a short one", async () => {
    const { WebSocket, clock, events } = await opened({ reconnect: { baseMs: 100, maxMs: 10_000, stableMs: 5000 } });
    const attempts = [];
    const cycle = async (openFor) => {
      WebSocket.last.drop(1006);
      const [, info] = events.findLast(([n]) => n === "$reconnecting");
      attempts.push(info.attempt);
      await clock.advance(info.delayMs);
      WebSocket.last.accept();
      await clock.advance(openFor);
    };
    await cycle(100); // 1
    await cycle(100); // 2: the connection in between was short
    await cycle(5000); // 3, then stable
    await cycle(0); // 1 again
    assert.deepEqual(attempts, [1, 2, 3, 1]);
  });

  it("emits state events in order across a restart", async () => {
    const { WebSocket, clock, names, events } = await opened();
    WebSocket.last.drop(1012, "service restart");
    await clock.advance(10_000);
    WebSocket.last.drop(1006); // the new gateway is not up yet
    await clock.advance(10_000);
    WebSocket.last.accept();
    assert.deepEqual(names(), [
      "$connecting",
      "$open",
      "$closed",
      "$reconnecting",
      "$connecting",
      "$closed",
      "$reconnecting",
      "$connecting",
      "$open",
    ]);
    assert.deepEqual(events[2][1], { code: 1012, reason: "service restart", willReconnect: true });
    assert.equal(events[3][1].attempt, 1);
    assert.equal(events[6][1].attempt, 2);
    assert.deepEqual(events[7][1], { attempt: 2 });
  });

  it("follows the close-code policy", async () => {
    for (const code of [1001, 1006, 1009, 1011, 1012, 1013, 3008, 3011]) {
      assert.equal(defaultShouldReconnect({ code, reason: "", opened: true }), true, code);
    }
    for (const code of [1000, 1002, 1003, 1007, 1008, 3000, 4000, 4003, 4999]) {
      assert.equal(defaultShouldReconnect({ code, reason: "", opened: true }), false, code);
      const { WebSocket, client, events, clock } = await opened();
      WebSocket.last.drop(code, "bye");
      await clock.advance(60_000);
      assert.equal(client.state, "closed", String(code));
      assert.equal(WebSocket.instances.length, 1, `${code}: no new socket`);
      assert.deepEqual(events.at(-1), ["$closed", { code, reason: "bye", willReconnect: false }]);
    }
  });

  it("lets shouldReconnect override the policy, and stops after maxAttempts", async () => {
    const seen = [];
    const { WebSocket, client, clock } = await opened({
      shouldReconnect: (info) => {
        seen.push(info);
        return info.code === 4001;
      },
      reconnect: { maxAttempts: 2 },
    });
    WebSocket.last.drop(4001, "app says retry");
    await clock.advance(60_000);
    WebSocket.last.drop(4001);
    await clock.advance(60_000);
    WebSocket.last.drop(4001);
    await clock.advance(60_000);
    assert.equal(WebSocket.instances.length, 3);
    assert.equal(client.state, "closed");
    assert.deepEqual(seen[0], { code: 4001, reason: "app says retry", opened: true });
    assert.equal(seen[1].opened, false);
  });

  it("never reconnects with reconnect: false", async () => {
    const { WebSocket, client, clock } = await opened({ reconnect: false });
    WebSocket.last.drop(1012);
    await clock.advance(60_000);
    assert.equal(client.state, "closed");
    assert.equal(WebSocket.instances.length, 1);
  });
});

describe("tokens", () => {
  it("fetches a token for every attempt and sends it as ?token=", async () => {
    let n = 0;
    const { WebSocket, clock } = setup({ getToken: async () => `t${++n}`, url: "ws://gw.test/ws?x=1" });
    await flush();
    assert.equal(WebSocket.last.url, "ws://gw.test/ws?x=1&token=t1");
    WebSocket.last.drop(1006);
    await clock.advance(60_000);
    assert.equal(WebSocket.last.url, "ws://gw.test/ws?x=1&token=t2");
  });

  it("a fixed token", async () => {
    const { WebSocket } = setup({ token: "abc" });
    await flush();
    assert.equal(WebSocket.last.url, `${URL}?token=abc`);
    assert.throws(() => new WsqClient(URL, { WebSocket, token: "a", getToken: () => "b" }), TypeError);
  });

  it("stops when getToken gives null, retries when it throws", async () => {
    let answer = () => {
      throw new Error("auth server down");
    };
    const { WebSocket, client, clock, events } = setup({ getToken: () => answer() });
    await flush();
    assert.equal(WebSocket.instances.length, 0);
    assert.equal(events.find(([n]) => n === "$error")[1].code, "token");
    assert.equal(client.state, "reconnecting");
    answer = () => null;
    await clock.advance(60_000);
    assert.equal(client.state, "closed");
    assert.deepEqual(events.at(-1), ["$closed", { code: 1000, reason: "no token", willReconnect: false }]);
  });
});

describe("close and connect", () => {
  it("close() settles everything and stops", async () => {
    const { client, WebSocket, clock, events } = await opened();
    const inFlight = client.request("a").catch((e) => e);
    WebSocket.last.drop(1006); // now reconnecting: what follows is queued
    const queued = client.request("b").catch((e) => e);
    client.send("c", 3);
    client.close();
    assert.equal((await inFlight).code, "connection_lost");
    const err = await queued;
    assert.equal(err.code, "closed");
    assert.equal(err.sent, false);
    assert.equal(client.state, "closed");
    assert.deepEqual(events.slice(-2), [
      ["$closed", { code: 1000, reason: "", willReconnect: false }],
      ["$dropped", { action: "c", data: 3, reason: "closed" }],
    ]);
    await clock.advance(60_000);
    assert.equal(WebSocket.instances.length, 1);
    await assert.rejects(client.request("d"), { code: "closed" });
    assert.equal(client.send("e"), false);
    client.close(); // twice is harmless
  });

  it("close() on an open socket closes it with the code given", async () => {
    const { client, WebSocket } = await opened();
    client.close(4000, "bye");
    assert.deepEqual(WebSocket.last.closedWith, { code: 4000, reason: "bye" });
    WebSocket.last.drop(4000, "bye"); // the close event, later: ignored
    assert.equal(client.state, "closed");
  });

  it("connect() resolves once open; the factory too; rejects when closed for good", async () => {
    const WebSocket = fakeWebSocketClass();
    const client = new WsqClient(URL, { WebSocket, autoConnect: false });
    assert.equal(client.state, "idle");
    const ready = client.connect();
    await flush();
    WebSocket.last.accept();
    await ready;
    assert.equal(client.state, "open");

    const made = connect(URL, { WebSocket });
    await flush();
    WebSocket.last.accept();
    assert.equal((await made).state, "open");

    const refused = connect(URL, { WebSocket });
    await flush();
    WebSocket.last.drop(4003, "refused");
    await assert.rejects(refused, { code: "closed" });
    client.close();
    (await made).close();
  });

  it("takes http(s) URLs as ws(s), and refuses what is no WebSocket URL at once", () => {
    const WebSocket = fakeWebSocketClass();
    assert.equal(new WsqClient("http://gw.test/ws", { WebSocket, autoConnect: false }).url, "ws://gw.test/ws");
    assert.equal(new WsqClient("https://gw.test/ws", { WebSocket, autoConnect: false }).url, "wss://gw.test/ws");
    assert.throws(() => new WsqClient("/ws", { WebSocket }), TypeError); // no page to be relative to
    assert.throws(() => new WsqClient("ftp://gw.test/", { WebSocket }), TypeError);
  });

  it("lets requests made in an $open listener go before the queued ones", async () => {
    const { client, WebSocket } = setup();
    client.on("$open", () => client.request("restore_state").catch(() => {}));
    client.request("queued").catch(() => {});
    await flush();
    WebSocket.last.accept();
    assert.deepEqual(
      WebSocket.last.sent.map((f) => f.action),
      ["restore_state", "queued"],
    );
  });

  it("stops cleanly when a listener closes the client mid-way", async () => {
    for (const name of ["$connecting", "$closed", "$reconnecting"]) {
      const { client, WebSocket, clock, events } = await opened();
      client.on(name, () => client.close());
      WebSocket.last.drop(1006);
      await clock.advance(60_000);
      assert.equal(client.state, "closed", name);
      assert.ok(WebSocket.instances.length <= 2, name);
      const closed = events.filter(([n]) => n === "$closed");
      assert.equal(closed.at(-1)[1].willReconnect, false, name);
      assert.ok(closed.length <= 2, `${name}: ${JSON.stringify(events)}`);
    }
  });

  it("needs a WebSocket class", () => {
    const saved = globalThis.WebSocket;
    try {
      globalThis.WebSocket = undefined;
      assert.throws(() => new WsqClient(URL), /WebSocket option/);
    } finally {
      globalThis.WebSocket = saved;
    }
  });
});

describe("connect timeout", () => {
  it("an attempt with no $connected in time fails, is closed, and is retried", async () => {
    const { WebSocket, clock, events } = setup({ connectTimeoutMs: 1000, reconnect: { baseMs: 100, maxMs: 100 } });
    await flush();
    const silent = WebSocket.last;
    await clock.advance(999);
    assert.equal(WebSocket.instances.length, 1); // not yet
    await clock.advance(1);
    assert.notEqual(silent.closedWith, null);
    assert.deepEqual(events.find(([name]) => name === "$closed"), [
      "$closed",
      { code: 1006, reason: "connect timeout", willReconnect: true },
    ]);
    await clock.advance(100);
    assert.equal(WebSocket.instances.length, 2);
    WebSocket.last.accept();
    await clock.advance(5000); // an open connection has no connect timer left
    assert.equal(WebSocket.instances.length, 2);
    assert.equal(events.at(-1)[0], "$open");
  });
});

describe("heartbeat", () => {
  it("pings when idle and drops a socket whose pong does not come", async () => {
    const { WebSocket, clock, client, events } = await opened({ heartbeat: { intervalMs: 1000, timeoutMs: 500 } });
    await clock.advance(500);
    WebSocket.last.receive({ action: "news", data: 1 }); // traffic postpones the ping
    await clock.advance(999);
    assert.deepEqual(WebSocket.last.sent, []);
    await clock.advance(1);
    assert.equal(WebSocket.last.sent[0].action, "$ping");
    WebSocket.last.reply(null, "$pong");
    await clock.advance(1000);
    assert.equal(WebSocket.last.sent.length, 2, "the next ping");
    const socket = WebSocket.last;
    await clock.advance(500); // no pong
    assert.deepEqual(socket.closedWith, { code: 4000, reason: "heartbeat timeout" });
    assert.equal(client.state, "reconnecting");
    assert.deepEqual(events.findLast(([n]) => n === "$closed")[1], {
      code: 1006,
      reason: "heartbeat timeout",
      willReconnect: true,
    });
  });
});

describe("session resume", () => {
  const TOKEN = `gw-1.${"A".repeat(22)}.${"B".repeat(22)}`;
  const ID = "gw-1.abcdefghijklmnopqrstuv";

  /** An open client whose gateway has resume on; `push(seq, n)` sends a numbered push. */
  async function resumable(options) {
    const t = setup(options);
    await flush();
    t.WebSocket.last.accept(ID, "ada", { resume_token: TOKEN, resume_window_s: 30 });
    const got = [];
    t.client.on("*", (data, action) => got.push(data));
    const push = (seq, n = seq, socket = t.WebSocket.last) => socket.receive({ action: "news", data: n, seq });
    const resumeUrl = (socket) => {
      const query = new globalThis.URL(socket.url).searchParams;
      return { resume: query.get("resume"), after: query.get("after") };
    };
    return { ...t, got, push, resumeUrl };
  }

  it("handles each seq once and in order: duplicates are dropped silently", async () => {
    const { client, WebSocket, got, push, events } = await resumable();
    const reply = client.request("echo", "x");
    const { id } = WebSocket.last.sent[0];
    push(1);
    push(2);
    push(1);
    push(2);
    WebSocket.last.receive({ action: "echo", data: "old", id, seq: 2 }); // a duplicate: not a reply
    WebSocket.last.receive({ action: "echo", data: "x", id, seq: 3 });
    push(4);
    assert.deepEqual(got, [1, 2, 4]);
    assert.equal(await reply, "x");
    assert.equal(client.state, "open");
    assert.equal(WebSocket.instances.length, 1);
    assert.ok(!events.some(([n]) => n === "$error"));
  });

  it("a gap abandons the socket without a close and resumes at once after the last seq seen", async () => {
    const { client, WebSocket, got, push, resumeUrl, events, clock } = await resumable();
    push(1);
    push(2);
    const first = WebSocket.last;
    push(4); // 3 was lost
    push(5, 5, first); // the abandoned socket is not listened to any more
    assert.deepEqual(got, [1, 2]);
    assert.equal(first.closedWith, null, "no close frame: it would end the session");
    assert.equal(client.state, "reconnecting");
    assert.deepEqual(events.slice(-2), [
      ["$closed", { code: 1006, reason: "missed frames", willReconnect: true }],
      ["$reconnecting", { attempt: 1, delayMs: 0, code: 1006, reason: "missed frames", resuming: true }],
    ]);
    await clock.advance(0);
    assert.equal(WebSocket.instances.length, 2);
    assert.deepEqual(resumeUrl(WebSocket.last), { resume: TOKEN, after: "2" });
    WebSocket.last.accept(ID, "ada", { resume_token: TOKEN, resume_window_s: 30, resumed: true, recovered: true });
    first.drop(3012, "session resumed"); // the gateway closes the old socket: nothing happens
    push(3);
    push(4);
    push(5);
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
    assert.equal(client.state, "open");
    assert.equal(client.connectionId, ID);
    assert.deepEqual(events.at(-1)[1].resumed, true);
  });

  it("reconnects a lost socket with ?resume=&after=, keeping the other query parameters", async () => {
    const { WebSocket, clock, push, events } = await resumable({ url: "ws://gw.test/ws?x=1", token: "jwt" });
    push(1);
    push(2);
    push(3);
    WebSocket.last.drop(1006);
    assert.equal(events.at(-1)[1].resuming, true);
    await clock.advance(60_000);
    assert.equal(WebSocket.last.url, `ws://gw.test/ws?x=1&token=jwt&resume=${TOKEN}&after=3`);
    WebSocket.last.drop(1006); // the network is still down: the next attempt resumes too
    await clock.advance(60_000);
    assert.equal(WebSocket.last.url, `ws://gw.test/ws?x=1&token=jwt&resume=${TOKEN}&after=3`);
  });

  it("resumed and recovered: in-flight requests stay pending, their replies come in the replay", async () => {
    const { client, WebSocket, clock, push, got, events } = await resumable();
    push(1);
    const inFlight = client.request("charge", { cents: 100 });
    const { id } = WebSocket.last.sent[0];
    WebSocket.last.drop(1006);
    const queued = client.request("later");
    await clock.advance(1000);
    const second = WebSocket.last;
    second.accept(ID, "ada", { resume_token: TOKEN, resume_window_s: 30, resumed: true, recovered: true });
    const open = events.findLast(([n]) => n === "$open")[1];
    assert.deepEqual([open.connectionId, open.resumed, open.recovered], [ID, true, true]);
    assert.equal(second.sent[0].action, "later", "queued requests are sent as before");
    push(2);
    second.receive({ action: "charge", data: "charged", id, seq: 3 });
    assert.equal(await inFlight, "charged");
    second.receive({ action: "later", data: "done", id: second.sent[0].id, seq: 4 });
    assert.equal(await queued, "done");
    assert.deepEqual(got, [1, 2]);
  });

  it("recovered false: in-flight requests reject, queued ones are sent, numbering goes on", async () => {
    const { client, WebSocket, clock, push, got, events } = await resumable();
    push(1);
    const inFlight = client.request("charge").catch((e) => e);
    WebSocket.last.drop(1006);
    const queued = client.request("later");
    await clock.advance(1000);
    WebSocket.last.accept(ID, "ada", { resume_token: TOKEN, resume_window_s: 30, resumed: true, recovered: false });
    const err = await inFlight;
    assert.equal(err.code, "connection_lost");
    assert.equal(err.outcomeUnknown, true);
    assert.match(err.message, /not kept: it may or may not have run/);
    const open = events.findLast(([n]) => n === "$open")[1];
    assert.deepEqual([open.resumed, open.recovered], [true, false]);
    push(9); // frames 2-8 are gone: the numbering goes on from here, no new resume
    push(10);
    assert.deepEqual(got, [1, 9, 10]);
    assert.equal(WebSocket.instances.length, 2);
    WebSocket.last.reply("done");
    assert.equal(await queued, "done");
  });

  it("resumed false: a new connection, numbered from 1; in-flight requests reject", async () => {
    const { client, WebSocket, clock, push, got, events } = await resumable();
    push(1);
    push(2);
    const inFlight = client.request("charge").catch((e) => e);
    WebSocket.last.drop(1011);
    await clock.advance(1000);
    const other = `gw-2.${"C".repeat(22)}.${"D".repeat(22)}`;
    WebSocket.last.accept("gw-2.zyxwvutsrqponmlkjihgfe", "ada", {
      resume_token: other,
      resume_window_s: 30,
      resumed: false,
      recovered: false,
    });
    const err = await inFlight;
    assert.equal(err.code, "connection_lost");
    assert.match(err.message, /not resumed/);
    assert.equal(client.connectionId, "gw-2.zyxwvutsrqponmlkjihgfe");
    const open = events.findLast(([n]) => n === "$open")[1];
    assert.deepEqual([open.resumed, open.recovered], [false, false]);
    push(1, "new 1");
    assert.deepEqual(got, [1, 2, "new 1"]);
    WebSocket.last.drop(1006);
    await clock.advance(60_000);
    assert.match(WebSocket.last.url, new RegExp(`resume=${other}&after=1$`));
  });

  it("a close that ends the session (1000, 4000...) is no resume: a new connection, as before", async () => {
    const { client, WebSocket, clock, push, events } = await resumable({ shouldReconnect: () => true });
    push(1);
    const inFlight = client.request("charge").catch((e) => e);
    WebSocket.last.drop(4000, "bye");
    assert.equal((await inFlight).code, "connection_lost");
    assert.equal(events.at(-1)[1].resuming, false);
    await clock.advance(60_000);
    assert.equal(new globalThis.URL(WebSocket.last.url).search, "");
    assert.equal(client.state, "connecting");
  });

  it("3012 on the current socket (another client took the session over): closed, no reconnect", async () => {
    const { client, WebSocket, clock, events } = await resumable({ shouldReconnect: () => true });
    const inFlight = client.request("charge").catch((e) => e);
    WebSocket.last.drop(3012, "session resumed");
    assert.equal(client.state, "closed");
    assert.equal((await inFlight).code, "connection_lost");
    assert.deepEqual(events.at(-1), ["$closed", { code: 3012, reason: "session resumed", willReconnect: false }]);
    await clock.advance(60_000);
    assert.equal(WebSocket.instances.length, 1);
  });

  it("the heartbeat gives a silent socket up without a close frame, and resumes", async () => {
    const { WebSocket, clock, push, resumeUrl } = await resumable({ heartbeat: { intervalMs: 1000, timeoutMs: 500 } });
    push(1);
    const first = WebSocket.last;
    await clock.advance(1500); // a $ping, no $pong
    assert.equal(first.closedWith, null);
    await clock.advance(60_000);
    assert.deepEqual(resumeUrl(WebSocket.last), { resume: TOKEN, after: "1" });
    WebSocket.last.accept(ID, "ada", { resume_token: TOKEN, resume_window_s: 30, resumed: false, recovered: false });
    assert.deepEqual(first.closedWith, { code: 1000, reason: "" }, "not resumed: the old socket is closed");
  });

  it("a $ping answered in the replay of a recovered session keeps one heartbeat going", async () => {
    const { WebSocket, clock, push } = await resumable({
      heartbeat: { intervalMs: 1000, timeoutMs: 5000 },
      requestTimeoutMs: 60_000,
    });
    push(1);
    await clock.advance(1000); // idle: a $ping
    const ping = WebSocket.last.sent.at(-1);
    assert.equal(ping.action, "$ping");
    WebSocket.last.drop(1006);
    await clock.advance(1000);
    WebSocket.last.accept(ID, "ada", { resume_token: TOKEN, resume_window_s: 30, resumed: true, recovered: true });
    WebSocket.last.receive({ action: "$pong", data: null, id: ping.id, seq: 2 });
    await clock.advance(0);
    assert.equal(clock.pending().length, 2, "the heartbeat's timer and the stable timer");
  });

  it("close() while resuming rejects what waited, and closes an abandoned socket", async () => {
    const { client, WebSocket, push } = await resumable();
    push(1);
    const first = WebSocket.last;
    const inFlight = client.request("charge").catch((e) => e);
    push(3); // a gap
    client.close(4000, "bye");
    assert.equal((await inFlight).code, "connection_lost");
    assert.deepEqual(first.closedWith, { code: 4000, reason: "bye" });
    assert.equal(client.state, "closed");
  });

  it("resume: false, or a gateway without resume_token: seq is ignored, reconnects are new connections", async () => {
    for (const [options, extra] of [
      [{ resume: false }, { resume_token: TOKEN, resume_window_s: 30 }],
      [{}, {}],
    ]) {
      const t = setup(options);
      await flush();
      t.WebSocket.last.accept(ID, null, extra);
      const got = [];
      t.client.on("news", (n) => got.push(n));
      const inFlight = t.client.request("charge").catch((e) => e);
      for (const seq of [1, 1, 3]) t.WebSocket.last.receive({ action: "news", data: seq, seq });
      assert.deepEqual(got, [1, 1, 3]);
      assert.equal(t.client.state, "open");
      t.WebSocket.last.drop(1006);
      assert.equal((await inFlight).code, "connection_lost", "rejected at once");
      assert.equal(t.events.at(-1)[1].resuming, false);
      await t.clock.advance(60_000);
      assert.equal(new globalThis.URL(t.WebSocket.last.url).search, "");
      t.WebSocket.last.accept();
      const open = t.events.at(-1)[1];
      assert.deepEqual([open.resumed, open.recovered], [false, false]);
    }
  });
});
