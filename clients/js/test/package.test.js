// The package as npm would publish it: its manifest, and type definitions that name exactly
// what the module exports.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";

import * as client from "../src/index.js";

const here = new URL("..", import.meta.url);
const manifest = JSON.parse(readFileSync(new URL("package.json", here), "utf8"));
const types = readFileSync(new URL("src/index.d.ts", here), "utf8");

describe("package", () => {
  it("has no runtime dependencies and points at files that exist", async () => {
    assert.equal(manifest.dependencies, undefined);
    assert.equal(manifest.type, "module");
    assert.equal(manifest.license, "MIT");
    assert.equal(manifest.engines.node, ">=20");
    for (const path of [manifest.main, manifest.types, ...Object.values(manifest.exports["."])]) {
      assert.ok(readFileSync(new URL(path, here)).length > 0, path);
    }
    assert.equal(client.VERSION, manifest.version);
    // the package imports itself by name, as an application would
    const byName = await import("wsq-client");
    assert.equal(byName.WsqClient, client.WsqClient);
  });

  it("declares in index.d.ts exactly what index.js exports", () => {
    const declared = new Set(
      [...types.matchAll(/^export declare (?:class|function|const) ([A-Za-z_$][\w$]*)/gm)].map((m) => m[1]),
    );
    assert.deepEqual([...declared].sort(), Object.keys(client).sort());
    for (const name of Object.keys(client)) {
      const kind = typeof client[name] === "function" ? /^export declare (class|function)/ : /^export declare const/;
      assert.match(types.split("\n").find((l) => l.includes(` ${name}`) && l.startsWith("export declare")), kind, name);
    }
  });

  it("declares every public member of WsqClient", () => {
    const body = types.slice(types.indexOf("export declare class WsqClient"));
    const members = Object.getOwnPropertyNames(client.WsqClient.prototype).filter((n) => n !== "constructor");
    for (const name of members) assert.match(body, new RegExp(`\\n  (readonly )?${name}[(<:]`), name);
  });
});
