/**
 * @file End-to-end tests: the client, with a `wx` whose `request` is real HTTP, against the
 * real weauth-issuer and the real Envoy with the weauth filter, started by the project's
 * harness (`weauth-stack --free-ports --json`), and `wx.login` codes from the mock WeChat.
 *
 * No test waits for a token to expire, and none depends on how fast the machine is: the
 * issuer's access tokens live an hour (`WEAUTH_ACCESS_TTL=1h`), so every token a login or a
 * refresh gets stays valid for the whole run, and the exact counts of refreshes and logins
 * cannot be pushed up by a second expiry under load (a 4 s, then 6 s lifetime could be
 * outlasted by twenty requests through Envoy on a starved 2-core machine). A test that needs
 * an expired access token makes one, at the point it needs it (`withExpiredAccess`): the
 * issuer signs with a key this file generates (`WEAUTH_SIGNING_KEY_FILE`), so the test signs
 * a copy of the session's access token whose `exp` is an hour past — beyond any leeway or
 * clock skew — checks that Envoy refuses it as expired (after verifying its signature: the
 * filter reads the claims only then), and puts it in storage with the session's real refresh
 * token, as an app reopened an hour later finds them. The long lifetime also means a token
 * refused at the edge after a revocation or a logout (`waitRefused`) was refused for that,
 * not because it ran out meanwhile. The refresh-token reuse grace is the issuer's longest,
 * 60 s (`WEAUTH_REFRESH_REUSE_GRACE`, the client told with `refreshReuseGraceMs`), so a refresh
 * retried after a lost or refused attempt is inside it however slow the run. Refreshes and
 * logins are counted twice: by the shim (what the client sent) and by the issuer
 * (`/metrics`).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { KeyObject, generateKeyPairSync, sign } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { createClient, WeauthError } from "../../src/index.js";
import type { WeauthClient } from "../../src/index.js";
import { Stack, startStack } from "./stack.js";
import { FetchWx, closedPort } from "./wx-shim.js";

let stack: Stack;
let deadPort: number;
let users = 0;
/** The issuer's signing key (Ed25519, its default algorithm), generated here. */
let signingKey: KeyObject;
let keyDir: string | undefined;

/** The issuer's access-token lifetime: longer than any run, so no token expires by itself. */
const ACCESS_TTL_S = 3600;
/** The issuer's refresh-token reuse grace: its longest. */
const REUSE_GRACE_S = 60;

before(async () => {
  deadPort = await closedPort();
  const { privateKey } = generateKeyPairSync("ed25519");
  signingKey = privateKey;
  keyDir = mkdtempSync(path.join(tmpdir(), "weauth-client-e2e-"));
  const keyFile = path.join(keyDir, "signing.pem");
  writeFileSync(keyFile, privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
  stack = await startStack({
    WEAUTH_ACCESS_TTL: `${ACCESS_TTL_S}s`,
    WEAUTH_SIGNING_KEY_FILE: keyFile,
    WEAUTH_REFRESH_REUSE_GRACE: `${REUSE_GRACE_S}s`,
    WEAUTH_LOGIN_RATE: "0",
  });
});

after(async () => {
  await stack?.stop();
  if (keyDir) {
    rmSync(keyDir, { recursive: true, force: true });
  }
});

interface Device {
  wx: FetchWx;
  client: WeauthClient;
}

/** A client through Envoy on `wx`, quick backoff for the tests. */
function clientOn(wx: FetchWx): WeauthClient {
  return createClient({
    baseUrl: stack.info.envoy,
    wx,
    retry: { attempts: 5, baseDelayMs: 100, maxDelayMs: 400 },
    refreshReuseGraceMs: REUSE_GRACE_S * 1000,
  });
}

/** A new user on a new device. */
function device(): Device {
  const wx = new FetchWx(stack.info.mock, `e2e-user-${process.pid}-${++users}`, deadPort);
  return { wx, client: clientOn(wx) };
}

function stored(wx: FetchWx): { accessToken: string; refreshToken: string } {
  return JSON.parse(wx.storage.get("weauth.tokens")!);
}

function claims(jwt: string): { exp: number; sid: string; sub: string } {
  return JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString("utf8"));
}

/**
 * `jwt` (an access token the issuer signed) as it would be an hour after its lifetime ended:
 * the same header (key id, algorithm, type) and claims (session, subject, jti, audience),
 * the times moved back, signed with the issuer's key.
 */
function expiredCopy(jwt: string): string {
  const [header, payload] = jwt.split(".");
  const c = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as Record<string, unknown>;
  const exp = Math.floor(Date.now() / 1000) - 3600;
  const moved = { ...c, iat: exp - ACCESS_TTL_S, nbf: exp - ACCESS_TTL_S, exp };
  const input = `${header}.${Buffer.from(JSON.stringify(moved)).toString("base64url")}`;
  return `${input}.${sign(null, Buffer.from(input), signingKey).toString("base64url")}`;
}

/** The issuer's Prometheus counters, `name{labels}` → value. */
async function metrics(): Promise<Map<string, number>> {
  const text = await (await fetch(`${stack.info.issuer}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^(weauth_(?:refreshes|logins)_total\{[^}]*\})\s+(\d+)/.exec(line);
    if (m) {
      out.set(m[1], Number(m[2]));
    }
  }
  return out;
}

/** Counter increases between two scrapes, only the series that moved. */
function delta(before: Map<string, number>, after: Map<string, number>): Record<string, number> {
  const d: Record<string, number> = {};
  for (const [k, v] of after) {
    const diff = v - (before.get(k) ?? 0);
    if (diff !== 0) {
      d[k] = diff;
    }
  }
  return d;
}

/** Status and challenge of `GET /api/hello` through Envoy with `token`, straight with fetch. */
async function edge(token: string): Promise<{ status: number; challenge: string }> {
  const res = await fetch(`${stack.info.envoy}/api/hello`, { headers: { authorization: `Bearer ${token}` } });
  await res.arrayBuffer();
  return { status: res.status, challenge: res.headers.get("www-authenticate") ?? "" };
}

/** Status of `GET /api/hello` through Envoy with `token`. */
async function edgeStatus(token: string): Promise<number> {
  return (await edge(token)).status;
}

/**
 * The device after its logged-in session's access token has expired: storage holds an
 * expired copy of it (`expiredCopy`) and the session's refresh token, and a new client on
 * it is the app reopened. Checks first that Envoy accepts the real token and refuses the
 * copy as expired — a copy it refused for its signature would say so instead.
 */
async function withExpiredAccess({ wx }: Device): Promise<Device> {
  const pair = stored(wx);
  const expired = expiredCopy(pair.accessToken);
  assert.equal(await edgeStatus(pair.accessToken), 200, "precondition: Envoy accepts the session's token");
  const { status, challenge } = await edge(expired);
  assert.equal(status, 401, "precondition: Envoy refuses the expired token");
  assert.match(challenge, /error="invalid_token".*has expired/, "precondition: refused as expired");
  wx.storage.set("weauth.tokens", JSON.stringify({ ...pair, accessToken: expired }));
  return { wx, client: clientOn(wx) };
}

/** Polls (bounded) until Envoy refuses `token`: the revocation reached the edge. */
async function waitRefused(token: string): Promise<void> {
  const deadline = Date.now() + 10000;
  while ((await edgeStatus(token)) !== 401) {
    assert.ok(Date.now() < deadline, "the revocation did not reach Envoy within 10 s");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test("e2e_login_then_request_identity_reaches_upstream", async () => {
  const { wx, client } = device();
  await client.login();
  const res = await client.request<{ headers: Record<string, string> }>({ url: "/api/hello" });
  assert.equal(res.statusCode, 200);
  assert.equal(res.data.headers["x-weauth-sub"], claims(stored(wx).accessToken).sub);
  assert.equal(wx.count("POST", "/v1/login"), 1);
});

test("e2e_expired_access_20_concurrent_requests_one_refresh_all_succeed", async () => {
  const dev = device();
  await dev.client.login();
  const old = stored(dev.wx);
  const { wx, client } = await withExpiredAccess(dev);
  const before = await metrics();
  const answers = await Promise.all(
    Array.from({ length: 20 }, (_, i) => client.request({ url: `/api/hello?n=${i}` })),
  );
  const after = await metrics();
  assert.deepEqual(
    answers.map((r) => r.statusCode),
    Array(20).fill(200),
  );
  assert.equal(wx.count("POST", "/v1/token/refresh"), 1, "the client sent one refresh");
  assert.deepEqual(delta(before, after), { 'weauth_refreshes_total{outcome="ok"}': 1 }, "the issuer saw one refresh, no reuse");
  assert.equal(wx.wxLogins, 1);
  assert.notEqual(stored(wx).refreshToken, old.refreshToken);
  // The rotated session still works: nobody presented the old refresh token twice.
  assert.equal(await edgeStatus(stored(wx).accessToken), 200);
});

for (const how of ["admin revoke", "logout elsewhere"] as const) {
  test(`e2e_revoked_session_${how.replace(" ", "_")}_exactly_one_new_login`, async () => {
    const { wx, client } = device();
    await client.login();
    const token = stored(wx).accessToken;
    if (how === "admin revoke") {
      const res = await fetch(`${stack.info.issuer}/v1/admin/revoke`, {
        method: "POST",
        headers: { authorization: `Bearer ${stack.info.admin_token}`, "content-type": "application/json" },
        body: JSON.stringify({ sid: claims(token).sid }),
      });
      assert.equal(res.status, 200);
    } else {
      const res = await fetch(`${stack.info.envoy}/v1/logout`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}` },
      });
      assert.equal(res.status, 204);
    }
    await waitRefused(token);
    const before = await metrics();
    const answers = await Promise.all(Array.from({ length: 10 }, () => client.request({ url: "/api/hello" })));
    const after = await metrics();
    assert.deepEqual(
      answers.map((r) => r.statusCode),
      Array(10).fill(200),
    );
    assert.equal(wx.wxLogins, 2, "the first login and exactly one new one");
    assert.equal(wx.count("POST", "/v1/login"), 2);
    assert.equal(wx.count("POST", "/v1/token/refresh"), 1, "one refresh, refused, then the login");
    const d = delta(before, after);
    assert.equal(d['weauth_logins_total{outcome="ok"}'], 1);
    assert.equal(d['weauth_refreshes_total{outcome="ok"}'], undefined);
    assert.notEqual(claims(stored(wx).accessToken).sid, claims(token).sid);
  });
}

test("e2e_refresh_refused_connection_retried_with_backoff_recovers_without_logout", async () => {
  const dev = device();
  await dev.client.login();
  const { wx, client } = await withExpiredAccess(dev);
  let refusals = 2;
  wx.faults.push((method, path) =>
    method === "POST" && path === "/v1/token/refresh" && refusals-- > 0 ? "refuse" : undefined,
  );
  const before = await metrics();
  const answers = await Promise.all(Array.from({ length: 5 }, () => client.request({ url: "/api/hello" })));
  const after = await metrics();
  assert.ok(answers.every((r) => r.statusCode === 200));
  assert.equal(wx.count("POST", "/v1/token/refresh"), 3, "two refused attempts, then one that arrived");
  assert.deepEqual(delta(before, after), { 'weauth_refreshes_total{outcome="ok"}': 1 });
  assert.equal(wx.wxLogins, 1, "a network failure is never turned into a logout");
});

test("e2e_refresh_network_down_rejects_network_keeps_tokens_then_recovers", async () => {
  const dev = device();
  await dev.client.login();
  const { wx, client } = await withExpiredAccess(dev);
  const tokens = wx.storage.get("weauth.tokens");
  let down = true;
  wx.faults.push((_method, path) => (down && path === "/v1/token/refresh" ? "refuse" : undefined));
  await assert.rejects(client.request({ url: "/api/hello" }), (e: unknown) => {
    assert.ok(e instanceof WeauthError);
    assert.equal((e as WeauthError).code, "network");
    return true;
  });
  assert.equal(wx.storage.get("weauth.tokens"), tokens, "tokens kept");
  down = false;
  const res = await client.request({ url: "/api/hello" });
  assert.equal(res.statusCode, 200);
  assert.equal(wx.wxLogins, 1);
});

test("e2e_refresh_answer_lost_retry_within_grace_recovers_without_login", async () => {
  // The refresh reached the issuer (the token rotated) but its answer was lost: the retry
  // presents the just-rotated refresh token within the issuer's reuse grace
  // (WEAUTH_REFRESH_REUSE_GRACE, 60 s here) and gets the refresh token it rotated to,
  // so the user is not sent through wx.login again.
  const dev = device();
  await dev.client.login();
  const { wx, client } = await withExpiredAccess(dev);
  let lose = 1;
  wx.faults.push((method, path) =>
    method === "POST" && path === "/v1/token/refresh" && lose-- > 0 ? "lose-answer" : undefined,
  );
  const before = await metrics();
  const res = await client.request({ url: "/api/hello" });
  const after = await metrics();
  assert.equal(res.statusCode, 200);
  assert.equal(wx.count("POST", "/v1/token/refresh"), 2);
  assert.equal(wx.wxLogins, 1, "no second wx.login");
  const d = delta(before, after);
  assert.equal(d['weauth_refreshes_total{outcome="ok"}'], 1);
  assert.equal(d['weauth_refreshes_total{outcome="grace"}'], 1);
  assert.equal(d['weauth_logins_total{outcome="ok"}'], undefined, "no login");
});

test("e2e_getPhoneNumber_detail_through_envoy_resolves_number", async () => {
  const { wx, client } = device();
  await client.login();
  const user = wx.user;
  const phone = "13800138000";
  const { code } = (await (
    await fetch(`${stack.info.mock}/mock/phonecode?user=${encodeURIComponent(user)}&phone=${phone}`)
  ).json()) as { code: string };
  const number = await client.getPhoneNumber({ code, errMsg: "getPhoneNumber:ok" });
  assert.equal(number.purePhoneNumber, phone);
  assert.equal(number.countryCode, "86");
});

test("e2e_decrypt_detail_through_envoy_resolves_data", async () => {
  const { wx, client } = device();
  await client.login();
  const user = wx.user;
  const detail = (await (
    await fetch(`${stack.info.mock}/mock/encrypt`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user, data: { nickName: "e2e", stepInfoList: [] } }),
    })
  ).json()) as Record<string, unknown>;
  const out = await client.decrypt<{ nickName: string }>({ ...detail, errMsg: "getUserInfo:ok" });
  assert.equal(out.data.nickName, "e2e");
});

test("e2e_decrypt_session_key_changed_one_relogin_and_one_retry", async () => {
  // Another wx.login elsewhere gave WeChat a new session_key after our login: the data is
  // encrypted under a key the issuer's session does not hold. The issuer says relogin; the
  // client logs in once and retries once. (The mock gives a fresh key at every login, so
  // this data stays undecryptable and the retry is refused too: the error says relogin.)
  const { wx, client } = device();
  await client.login();
  const user = wx.user;
  await fetch(`${stack.info.mock}/mock/login?user=${encodeURIComponent(user)}`);
  const detail = (await (
    await fetch(`${stack.info.mock}/mock/encrypt`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user, data: { nickName: "e2e" } }),
    })
  ).json()) as Record<string, unknown>;
  await assert.rejects(client.decrypt(detail), {
    code: "request_failed",
    statusCode: 400,
    error: "session_key_mismatch",
    relogin: true,
  });
  assert.equal(wx.wxLogins, 2);
  assert.equal(wx.count("POST", "/v1/me/decrypt"), 2);
});

test("e2e_logout_revokes_at_the_edge_and_clears_storage", async () => {
  const { wx, client } = device();
  await client.login();
  const token = stored(wx).accessToken;
  await client.logout();
  assert.equal(wx.storage.has("weauth.tokens"), false);
  assert.equal(client.isLoggedIn(), false);
  await waitRefused(token);
});
