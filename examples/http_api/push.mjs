// Push to wsq connections from Node (18+) with nothing but fetch: the gateway's HTTP server API.
//
//   WSQ_API_URL=http://gateway:8001 WSQ_API_KEY=... node push.mjs user 42 notice '{"text":"hi"}'
//
// docs/http-api.md shows this file; integration-tests/test_http_api_examples.py runs it.

async function wsq(method, params = {}) {
  const resp = await fetch(`${process.env.WSQ_API_URL}/api/${method}`, {
    method: "POST",
    headers: { Authorization: `Bearer ${process.env.WSQ_API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify(params),
    signal: AbortSignal.timeout(5000),
  });
  const body = await resp.json();
  if (!resp.ok) {
    // Only "unavailable" (503) is safe to retry as is: see docs/http-api.md.
    throw Object.assign(new Error(`${body.error.code}: ${body.error.message}`), body.error);
  }
  return body.result;
}

const [target, to, action, data] = process.argv.slice(2);
const params = target === "all" ? { target, action: to, data: JSON.parse(action ?? "null") }
  : { target, to, action, data: JSON.parse(data ?? "null") };
const { written } = await wsq("send", params);
console.log(`written to ${written} gateway(s)`);
