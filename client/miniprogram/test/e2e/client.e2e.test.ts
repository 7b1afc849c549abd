/**
 * @file End-to-end tests: the client, with a `wx` whose `request` is real HTTP, against the
 * real weauth-issuer and the real Envoy with the weauth filter, started by the project's
 * harness (`weauth-stack --free-ports --json`), and `wx.login` codes from the mock WeChat.
 *
 * The issuer runs with `WEAUTH_ACCESS_TTL=6s` and no leeway, and the filter with no clock
 * skew, so an access token really expires within a test; a test that needs an expired
 * token waits for its `exp` and first checks that Envoy refuses it. A token is refused once
 * the whole second of its `exp` is reached, so it lives (TTL - 1 s, TTL]: 6 s leaves more
 * than 5 s for a test that needs its tokens valid (a login or a refresh, then requests whose
 * refreshes are counted exactly), on a loaded machine too (4 s left 3, which twenty requests
 * through Envoy on a starved machine could outlast, and a second refresh failed the count). Refreshes and logins are
 * counted twice: by the shim (what the client sent) and by the issuer (`/metrics`).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createClient, WeauthError } from "../../src/index.js";
import type { WeauthClient } from "../../src/index.js";
import { Stack, startStack } from "./stack.js";
import { FetchWx, closedPort } from "./wx-shim.js";

let stack: Stack;
let deadPort: number;
let users = 0;

before(async () => {
  deadPort = await closedPort();
  stack = await startStack(
    {
      WEAUTH_ACCESS_TTL: "6s",
      WEAUTH_LEEWAY: "0s",
      WEAUTH_LOGIN_RATE: "0",
    },
    [{ clock_skew_seconds: 0 }],
  );
});

after(async () => {
  await stack?.stop();
});

interface Device {
  wx: FetchWx;
  client: WeauthClient;
}

/** A new user on a new device: a client through Envoy, quick backoff for the tests. */
function device(): Device {
  const wx = new FetchWx(stack.info.mock, `e2e-user-${process.pid}-${++users}`, deadPort);
  const client = createClient({
    baseUrl: stack.info.envoy,
    wx,
    retry: { attempts: 5, baseDelayMs: 100, maxDelayMs: 400 },
  });
  return { wx, client };
}

function stored(wx: FetchWx): { accessToken: string; refreshToken: string } {
  return JSON.parse(wx.storage.get("weauth.tokens")!);
}

function claims(jwt: string): { exp: number; sid: string; sub: string } {
  return JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString("utf8"));
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

/** Status of `GET /api/hello` through Envoy with `token`, straight with fetch. */
async function edgeStatus(token: string): Promise<number> {
  const res = await fetch(`${stack.info.envoy}/api/hello`, { headers: { authorization: `Bearer ${token}` } });
  await res.arrayBuffer();
  return res.status;
}

/** Waits until the access token's `exp` has passed, then checks Envoy refuses it. */
async function waitExpired(token: string): Promise<void> {
  const ms = claims(token).exp * 1000 - Date.now() + 50;
  if (ms > 0) {
    await new Promise((resolve) => setTimeout(resolve, ms));
  }
  assert.equal(await edgeStatus(token), 401, "precondition: Envoy refuses the expired token");
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
  const { wx, client } = device();
  await client.login();
  const old = stored(wx);
  await waitExpired(old.accessToken);
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
  const { wx, client } = device();
  await client.login();
  await waitExpired(stored(wx).accessToken);
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
  const { wx, client } = device();
  await client.login();
  await waitExpired(stored(wx).accessToken);
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
  // (WEAUTH_REFRESH_REUSE_GRACE, 10 s by default) and gets the refresh token it rotated to,
  // so the user is not sent through wx.login again.
  const { wx, client } = device();
  await client.login();
  await waitExpired(stored(wx).accessToken);
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
