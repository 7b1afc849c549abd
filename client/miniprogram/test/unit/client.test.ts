/**
 * @file Unit tests of `createClient` against the `wx` stub and the stand-in issuer of
 * `fake.ts`: single flight, retry once, backoff on network failure, logout, the button
 * details, and that nothing is ever logged.
 */
import { afterEach, beforeEach, mock, test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import path from "node:path";
import { createClient, WeauthError } from "../../src/index.js";
import type { ClientOptions, WeauthClient } from "../../src/index.js";
import { FakeIssuer, SeenRequest, StubAnswer, WxStub, tick } from "./fake.js";

const BASE = "https://api.example.test";

/**
 * Another copy of the package, with its own module state (and its own `SingleFlight` class),
 * as a copy in an independent sub-package is: the compiled modules loaded again.
 */
function secondCopy(): typeof import("../../src/index.js") {
  // Node's `require` (the mini-program typings declare one of their own).
  const load = createRequire(__filename);
  const src = path.resolve(__dirname, "../../src") + path.sep;
  const first = new Map<string, NodeJS.Module>();
  for (const [file, mod] of Object.entries(load.cache)) {
    if (file.startsWith(src) && mod) {
      first.set(file, mod);
      delete load.cache[file];
    }
  }
  try {
    return load(path.join(src, "index.js")) as typeof import("../../src/index.js");
  } finally {
    for (const [file, mod] of first) {
      load.cache[file] = mod;
    }
  }
}

interface Setup {
  issuer: FakeIssuer;
  wx: WxStub;
  client: WeauthClient;
  sleeps: number[];
}

function setup(extra: Partial<ClientOptions> = {}): Setup {
  const issuer = new FakeIssuer();
  const wx = new WxStub(issuer);
  const sleeps: number[] = [];
  const client = createClient({
    baseUrl: `${BASE}/`,
    wx,
    sleep: async (ms) => {
      sleeps.push(ms);
      await tick();
    },
    random: () => 0.5,
    ...extra,
  });
  return { issuer, wx, client, sleeps };
}

function bearer(req: SeenRequest): string {
  return String(req.header.authorization ?? "");
}

/** Waits (a few macrotasks at most) for what the client does without being awaited. */
async function eventually(what: string, done: () => boolean): Promise<void> {
  for (let i = 0; i < 50 && !done(); i++) {
    await tick();
  }
  assert.ok(done(), what);
}

/** What `promise` settles to: "ok", or the code of the `WeauthError` it rejects with. */
function settled(promise: Promise<unknown>): Promise<string> {
  return promise.then(
    () => "ok",
    (e: unknown) => (e as WeauthError).code,
  );
}

/** {@link settled}, read as `.value` once it has settled (undefined until then). */
function watched(promise: Promise<unknown>): { value?: string } {
  const box: { value?: string } = {};
  void settled(promise).then((value) => (box.value = value));
  return box;
}

/** The pair in `wx`'s storage. */
function storedPair(wx: WxStub): { accessToken: string; refreshToken: string } {
  return JSON.parse(wx.storage.get("weauth.tokens")!);
}

/**
 * Holds back the answer to the first request to `path` (with `"every"`, to each request to
 * it) until the returned function is called, so a test can act while that request is in
 * flight. Earlier holds on `wx` stay in force for the other paths.
 */
function holdAnswers(wx: WxStub, path: string, which: "first" | "every" = "first"): () => void {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const before = wx.hold;
  wx.hold = (req) =>
    req.path === path && (which === "every" || wx.count(path) === 1) ? gate : before(req);
  return release;
}

test("request_without_tokens_logs_in_once_then_sends_bearer", async () => {
  const { issuer, wx, client } = setup();
  const res = await client.request<{ ok: boolean }>({ url: "/api/hello" });
  assert.equal(res.statusCode, 200);
  assert.equal(res.data.ok, true);
  assert.equal(wx.wxLogins, 1);
  assert.equal(issuer.logins, 1);
  const api = wx.requests.find((r) => r.path === "/api/hello");
  assert.match(bearer(api!), /^Bearer at-\d+$/);
  assert.equal(api!.url, `${BASE}/api/hello`);
});

test("request_concurrent_without_tokens_one_login", async () => {
  const { issuer, wx, client } = setup();
  const all = await Promise.all(Array.from({ length: 10 }, () => client.request({ url: "/api/x" })));
  assert.ok(all.every((r) => r.statusCode === 200));
  assert.equal(wx.wxLogins, 1);
  assert.equal(issuer.logins, 1);
});

test("login_concurrent_calls_one_wx_login_tokens_stored", async () => {
  const { issuer, wx, client } = setup({ storageKey: "k" });
  await Promise.all([client.login(), client.login(), client.login()]);
  assert.equal(wx.wxLogins, 1);
  assert.equal(issuer.logins, 1);
  const stored = JSON.parse(wx.storage.get("k")!);
  assert.match(stored.accessToken, /^at-/);
  assert.match(stored.refreshToken, /^rt-/);
  assert.equal(client.isLoggedIn(), true);
});

test("login_when_logged_in_logs_in_again", async () => {
  const { issuer, client } = setup();
  await client.login();
  await client.login();
  assert.equal(issuer.logins, 2);
});

test("login_when_logged_in_ends_the_old_session_once_the_new_pair_is_stored", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  const old = storedPair(wx);
  const oldSession = issuer.access.get(old.accessToken)!;
  await client.login();
  const fresh = storedPair(wx);
  assert.notEqual(fresh.refreshToken, old.refreshToken);
  // Its refresh token would otherwise stay good for days, with nobody to use or end it.
  await eventually("the old session is ended", () => issuer.revokedSessions.has(oldSession));
  assert.equal(bearer(wx.requests.find((r) => r.path === "/v1/logout")!), `Bearer ${old.accessToken}`);
  assert.equal(issuer.revokedSessions.size, 1, "the new session lives on");
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(wx.count("/v1/token/refresh"), 0);
});

test("relogin_answer_ends_the_old_session_its_expired_access_token_renewed_for_it", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  const old = storedPair(wx);
  const oldSession = issuer.access.get(old.accessToken)!;
  let stale = 1;
  wx.faults.push((req) =>
    req.path === "/v1/me/decrypt" && stale-- > 0
      ? { statusCode: 400, data: { error: "session_key_mismatch", relogin: true } }
      : undefined,
  );
  // The access token expires while the request is out: the old session's logout is refused
  // (401) and renewed once with its refresh token, as logout() does.
  wx.hold = (req) => {
    if (req.path === "/v1/me/decrypt" && stale === 0) {
      issuer.expireAccessTokens();
    }
    return undefined;
  };
  assert.equal((await client.request({ url: "/v1/me/decrypt", method: "POST", data: {} })).statusCode, 200);
  assert.equal(wx.wxLogins, 2);
  await eventually("the old session is ended", () => issuer.revokedSessions.has(oldSession));
  assert.equal(wx.count("/v1/logout"), 2, "refused once, then sent with a renewed token");
  assert.equal(wx.count("/v1/token/refresh"), 1);
  assert.equal(issuer.revokedSessions.size, 1);
  assert.equal(issuer.reuses, 0);
  assert.notEqual(storedPair(wx).refreshToken, old.refreshToken);
});

test("login_with_appid_sends_appid_without_sends_code_only", async () => {
  const withAppid = setup({ appid: "wx0123456789abcdef" });
  await withAppid.client.login();
  const sent = withAppid.wx.requests.find((r) => r.path === "/v1/login")!.data as Record<string, unknown>;
  assert.deepEqual(Object.keys(sent).sort(), ["appid", "code"]);
  assert.equal(sent.appid, "wx0123456789abcdef");
  const plain = setup();
  await plain.client.login();
  const sentPlain = plain.wx.requests.find((r) => r.path === "/v1/login")!.data as Record<string, unknown>;
  assert.deepEqual(Object.keys(sentPlain), ["code"]);
});

test("request_expired_access_20_concurrent_one_refresh_all_succeed", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.expireAccessTokens();
  const all = await Promise.all(Array.from({ length: 20 }, (_, i) => client.request({ url: `/api/${i}` })));
  assert.deepEqual(
    all.map((r) => r.statusCode),
    Array(20).fill(200),
  );
  assert.equal(wx.count("/v1/token/refresh"), 1);
  assert.equal(issuer.reuses, 0);
  assert.equal(issuer.logins, 1);
  // Each request was sent at most twice: first try and one retry.
  assert.equal(wx.requests.filter((r) => r.path.startsWith("/api/")).length, 40);
});

test("request_401_after_refresh_finished_retries_without_refreshing", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.expireAccessTokens();
  // The first /api/slow is refused like the others, but its 401 is held back until the
  // refresh triggered by /api/fast is done.
  const release = holdAnswers(wx, "/api/slow");
  const slow = client.request({ url: "/api/slow" });
  await tick();
  const fast = await client.request({ url: "/api/fast" });
  assert.equal(fast.statusCode, 200);
  assert.equal(wx.count("/v1/token/refresh"), 1);
  release();
  const late = await slow;
  assert.equal(late.statusCode, 200);
  assert.equal(wx.count("/api/slow"), 2, "one retry with the current token");
  assert.equal(wx.count("/v1/token/refresh"), 1, "a late 401 on an old token must not refresh again");
  assert.equal(issuer.reuses, 0);
});

test("request_started_during_refresh_waits_and_sends_new_token_once", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.expireAccessTokens();
  const first = client.request({ url: "/api/first" });
  while (wx.count("/v1/token/refresh") === 0) {
    await tick();
  }
  const late = await client.request({ url: "/api/late" });
  assert.equal(late.statusCode, 200);
  assert.equal(wx.count("/api/late"), 1, "sent once, with the refreshed token");
  assert.equal((await first).statusCode, 200);
  assert.equal(wx.count("/v1/token/refresh"), 1);
});

test("request_revoked_session_refresh_invalid_grant_one_login_shared", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.revokeAll();
  const all = await Promise.all(Array.from({ length: 8 }, () => client.request({ url: "/api/x" })));
  assert.ok(all.every((r) => r.statusCode === 200));
  assert.equal(wx.count("/v1/token/refresh"), 1);
  assert.equal(wx.wxLogins, 2, "the first login and exactly one re-login");
  assert.equal(issuer.logins, 2);
});

test("request_refresh_network_failure_retried_with_backoff_then_succeeds", async () => {
  const { issuer, wx, client, sleeps } = setup();
  await client.login();
  issuer.expireAccessTokens();
  let failures = 2;
  wx.faults.push((req) =>
    req.path === "/v1/token/refresh" && failures-- > 0 ? { fail: "request:fail timeout" } : undefined,
  );
  const all = await Promise.all([client.request({ url: "/api/a" }), client.request({ url: "/api/b" })]);
  assert.ok(all.every((r) => r.statusCode === 200));
  assert.equal(wx.count("/v1/token/refresh"), 3);
  assert.deepEqual(sleeps, [375, 750], "500 then 1000 ms with equal jitter at 0.5");
  assert.equal(wx.wxLogins, 1, "a network failure is never turned into a login");
  assert.equal(issuer.reuses, 0);
});

test("request_refresh_network_down_rejects_network_tokens_kept", async () => {
  const { issuer, wx, client, sleeps } = setup({ retry: { attempts: 3 } });
  await client.login();
  const before = wx.storage.get("weauth.tokens");
  issuer.expireAccessTokens();
  wx.faults.push((req) => (req.path === "/v1/token/refresh" ? { fail: "request:fail net::ERR" } : undefined));
  await assert.rejects(client.request({ url: "/api/a" }), (e: unknown) => {
    assert.ok(e instanceof WeauthError);
    assert.equal((e as WeauthError).code, "network");
    return true;
  });
  assert.equal(sleeps.length, 2);
  assert.equal(wx.storage.get("weauth.tokens"), before, "tokens kept: not a logout");
  assert.equal(client.isLoggedIn(), true);
  // The network is back: the same refresh token still works.
  wx.faults.length = 0;
  const res = await client.request({ url: "/api/a" });
  assert.equal(res.statusCode, 200);
  assert.equal(wx.wxLogins, 1);
});

test("request_refresh_503_retried_honouring_retry_after", async () => {
  const { issuer, wx, client, sleeps } = setup();
  await client.login();
  issuer.expireAccessTokens();
  let busy = 1;
  wx.faults.push((req) =>
    req.path === "/v1/token/refresh" && busy-- > 0
      ? { statusCode: 503, data: { error: "temporarily_unavailable" }, header: { "Retry-After": "2" } }
      : undefined,
  );
  const res = await client.request({ url: "/api/a" });
  assert.equal(res.statusCode, 200);
  assert.deepEqual(sleeps, [2000]);
});

test("request_refresh_503_retry_after_as_http_date_waited_by_the_servers_clock", async () => {
  // The device's clock is an hour fast: the date counts from the answer's Date.
  const clock = Date.UTC(2026, 11, 6, 13, 0, 0);
  const { issuer, wx, client, sleeps } = setup({ now: () => clock });
  await client.login();
  issuer.expireAccessTokens();
  let busy = 1;
  wx.faults.push((req) =>
    req.path === "/v1/token/refresh" && busy-- > 0
      ? {
          statusCode: 503,
          data: { error: "temporarily_unavailable" },
          header: { "Retry-After": "Sun, 06 Dec 2026 12:00:03 GMT", Date: "Sun, 06 Dec 2026 12:00:00 GMT" },
        }
      : undefined,
  );
  assert.equal((await client.request({ url: "/api/a" })).statusCode, 200);
  assert.deepEqual(sleeps, [3000]);
});

test("request_refresh_retry_after_beyond_the_longest_delay_rejects_at_once_tokens_kept_refreshes_held", async () => {
  let clock = Date.UTC(2026, 11, 6);
  const { issuer, wx, client, sleeps } = setup({ now: () => clock });
  await client.login();
  const before = wx.storage.get("weauth.tokens");
  issuer.expireAccessTokens();
  // A 429: the refresh token was not taken (after a 5xx, which may come after a rotation, the
  // token is not presented past its reuse grace: see the `..._past_the_reuse_grace_...` tests).
  wx.faults.push((req) =>
    req.path === "/v1/token/refresh" && clock < Date.UTC(2026, 11, 6) + 30_000
      ? { statusCode: 429, data: { error: "rate_limited" }, header: { "Retry-After": "30" } }
      : undefined,
  );
  const refused = { code: "refresh_failed", statusCode: 429, error: "rate_limited" };
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  // 30 s is more than a retry waits (8 s): no retry within the issuer's window, capped early.
  assert.deepEqual(sleeps, []);
  assert.equal(wx.count("/v1/token/refresh"), 1);
  assert.equal(wx.storage.get("weauth.tokens"), before, "the tokens are kept");
  // Within the window a request's refresh fails at once, without asking.
  clock += 29_999;
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  assert.equal(wx.count("/v1/token/refresh"), 1);
  // Once it has passed, the same refresh token is presented.
  clock += 1;
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(wx.count("/v1/token/refresh"), 2);
  assert.equal(wx.wxLogins, 1);
  assert.equal(issuer.reuses, 0);
});

test("request_retry_still_401_returned_not_looping", async () => {
  const { wx, client } = setup();
  await client.login();
  wx.faults.push((req) =>
    req.path === "/api/never" ? { statusCode: 401, data: { error: "invalid_token" } } : undefined,
  );
  const res = await client.request({ url: "/api/never" });
  assert.equal(res.statusCode, 401);
  assert.equal(wx.count("/api/never"), 2);
  assert.equal(wx.count("/v1/token/refresh"), 1);
});

test("request_relogin_true_one_login_then_retry_once", async () => {
  const { wx, client } = setup();
  await client.login();
  let stale = 1;
  wx.faults.push((req) =>
    req.path === "/v1/me/decrypt" && stale-- > 0
      ? { statusCode: 400, data: { error: "session_key_mismatch", relogin: true } }
      : undefined,
  );
  const res = await client.request({ url: "/v1/me/decrypt", method: "POST", data: {} });
  assert.equal(res.statusCode, 200);
  assert.equal(wx.wxLogins, 2);
  assert.equal(wx.count("/v1/token/refresh"), 0, "a refresh would keep the old session_key");
  const [first, second] = wx.requests.filter((r) => r.path === "/v1/me/decrypt");
  assert.notEqual(bearer(first), bearer(second));
});

test("request_403_insufficient_scope_returned_no_refresh", async () => {
  const { wx, client } = setup();
  await client.login();
  wx.faults.push((req) =>
    req.path === "/api/admin"
      ? { statusCode: 403, data: { error: "insufficient_scope" }, header: { "www-authenticate": "Bearer" } }
      : undefined,
  );
  const res = await client.request({ url: "/api/admin" });
  assert.equal(res.statusCode, 403);
  assert.equal(wx.count("/v1/token/refresh"), 0);
});

test("request_network_failure_rejects_network_without_refresh", async () => {
  const { wx, client } = setup();
  await client.login();
  wx.faults.push((req) => (req.path === "/api/x" ? { fail: "request:fail" } : undefined));
  await assert.rejects(client.request({ url: "/api/x" }), { name: "WeauthError", code: "network" });
  assert.equal(wx.count("/v1/token/refresh"), 0);
  assert.equal(client.isLoggedIn(), true);
});

test("request_other_origin_no_token_no_login", async () => {
  const { wx, client } = setup();
  const other = (req: SeenRequest) => req.url.startsWith("https://cdn.other.test/");
  wx.faults.push((req) => (other(req) ? { statusCode: 200, data: "elsewhere" } : undefined));
  // Without tokens: a request to our origin would log in first; one to another origin does not.
  const before = await client.request({ url: "https://cdn.other.test/a.json" });
  assert.equal(before.data, "elsewhere");
  assert.equal(wx.wxLogins, 0, "no login for another origin");
  // Logged in, with a token to leak: it stays home.
  await client.login();
  const { accessToken } = storedPair(wx);
  const res = await client.request({ url: "https://cdn.other.test/b.json", header: { "x-trace": "1" } });
  assert.equal(res.data, "elsewhere");
  assert.equal(wx.wxLogins, 1, "the one login() only: none for the request");
  assert.equal(wx.count("/v1/login"), 1);
  const sent = wx.requests.filter(other);
  assert.equal(sent.length, 2);
  for (const req of sent) {
    for (const [name, value] of Object.entries(req.header)) {
      assert.doesNotMatch(String(value), /bearer/i, `no Bearer credential in ${name}`);
      assert.ok(!String(value).includes(accessToken), `no access token in ${name}`);
    }
  }
  // The caller's headers go as given, and nothing of ours is added.
  assert.deepEqual(sent[1].header, { "x-trace": "1" });
  // The token is there to send: our own origin gets it.
  await client.request({ url: "/api/x" });
  assert.equal(bearer(wx.requests.find((r) => r.path === "/api/x")!), `Bearer ${accessToken}`);
});

test("request_caller_authorization_header_replaced_others_kept", async () => {
  const { wx, client } = setup();
  await client.login();
  await client.request({ url: "/api/x", header: { Authorization: "Basic Zm9v", "x-trace": "1" } });
  const sent = wx.requests.find((r) => r.path === "/api/x")!;
  assert.equal(sent.header.Authorization, undefined);
  assert.match(bearer(sent), /^Bearer at-/);
  assert.equal(sent.header["x-trace"], "1");
});

test("request_other_origin_keeps_the_callers_own_authorization", async () => {
  const { wx, client } = setup();
  await client.login();
  wx.faults.push((req) => (req.url.startsWith("https://partner.other.test/") ? { statusCode: 200, data: "partner" } : undefined));
  const res = await client.request({
    url: "https://partner.other.test/v2/orders",
    header: { Authorization: "Key partner-api-key", "x-trace": "1" },
  });
  assert.equal(res.data, "partner");
  const sent = wx.requests.find((r) => r.url.startsWith("https://partner.other.test/"))!;
  // Not ours to authenticate: the partner's key goes as it was given, and no token of ours.
  assert.deepEqual(sent.header, { Authorization: "Key partner-api-key", "x-trace": "1" });
});

test("request_login_refused_rejects_login_failed_with_status", async () => {
  const { wx, client } = setup();
  wx.faults.push((req) =>
    req.path === "/v1/login" ? { statusCode: 403, data: { error: "access_denied" } } : undefined,
  );
  await assert.rejects(client.request({ url: "/api/x" }), {
    code: "login_failed",
    statusCode: 403,
    error: "access_denied",
  });
  assert.equal(client.isLoggedIn(), false);
});

/**
 * Makes the stand-in issuer refuse every login 403 `user_banned` (a ban until `until`, Unix
 * seconds) until `lift()`.
 */
function banLogins(wx: WxStub, until: number): { lift(): void } {
  let banned = true;
  wx.faults.push((req) =>
    req.path === "/v1/login" && banned
      ? { statusCode: 403, data: { error: "user_banned", error_description: "banned", until } }
      : undefined,
  );
  return {
    lift: () => {
      banned = false;
    },
  };
}

test("request_after_a_ban_fails_at_once_until_it_ends_login_asks_again", async () => {
  let clock = Date.UTC(2026, 11, 6);
  const { issuer, wx, client } = setup({ now: () => clock });
  const until = clock / 1000 + 3600;
  const ban = banLogins(wx, until);
  const refused = { code: "login_failed", statusCode: 403, error: "user_banned" };
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  assert.equal(wx.wxLogins, 1);
  // Further requests do not spend a wx.login code on the answer known in advance.
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  await assert.rejects(client.request({ url: "/api/y" }), refused);
  assert.equal(wx.wxLogins, 1);
  assert.equal(wx.requests.filter((r) => r.path === "/v1/login").length, 1);
  // An explicit login() asks again (the ban may have been lifted).
  await assert.rejects(client.login(), refused);
  assert.equal(wx.wxLogins, 2);
  // At most ten minutes held (a ban lifted early is noticed): then a request asks again.
  clock += 10 * 60 * 1000 - 1;
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  assert.equal(wx.wxLogins, 2);
  clock += 1;
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  assert.equal(wx.wxLogins, 3);
  // Once the ban's end has passed, a request logs in again.
  ban.lift();
  clock = until * 1000;
  const res = await client.request({ url: "/api/x" });
  assert.equal(res.statusCode, 200);
  assert.equal(wx.wxLogins, 4);
  assert.equal(issuer.logins, 1);
});

test("request_after_a_ban_without_end_held_until_login_succeeds", async () => {
  const { wx, client } = setup();
  let banned = true;
  wx.faults.push((req) =>
    req.path === "/v1/login" && banned
      ? { statusCode: 403, data: '{"error":"user_banned","error_description":"banned"}' }
      : undefined,
  );
  await assert.rejects(client.request({ url: "/api/x" }), { error: "user_banned" });
  await assert.rejects(client.request({ url: "/api/x" }), { error: "user_banned" });
  assert.equal(wx.wxLogins, 1);
  banned = false;
  await client.login();
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(wx.wxLogins, 2);
});

test("request_refresh_refused_for_a_ban_no_login_tokens_dropped_logins_held", async () => {
  let clock = Date.UTC(2026, 11, 6);
  const { issuer, wx, client } = setup({ now: () => clock });
  await client.login();
  issuer.expireAccessTokens();
  const until = clock / 1000 + 3600;
  let banned = true;
  const refusal = { statusCode: 403, data: { error: "user_banned", error_description: "banned", until } };
  wx.faults.push((req) =>
    banned && (req.path === "/v1/token/refresh" || req.path === "/v1/login") ? refusal : undefined,
  );
  await assert.rejects(client.request({ url: "/api/x" }), {
    code: "refresh_failed",
    statusCode: 403,
    error: "user_banned",
  });
  assert.equal(wx.wxLogins, 1, "no wx.login code spent on a login the ban refuses too");
  assert.equal(wx.count("/v1/login"), 1);
  assert.equal(client.isLoggedIn(), false);
  assert.equal(wx.storage.has("weauth.tokens"), false);
  // The logins a request would start are held as after a login's ban.
  await assert.rejects(client.request({ url: "/api/x" }), { code: "login_failed", error: "user_banned" });
  assert.equal(wx.wxLogins, 1);
  // Once the ban has ended, a request logs in again.
  banned = false;
  clock = until * 1000;
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(wx.wxLogins, 2);
});

test("request_during_a_ban_hold_refresh_refused_invalid_grant_rejects_held_no_wx_login", async () => {
  let clock = Date.UTC(2026, 11, 6);
  const { issuer, wx, client } = setup({ now: () => clock });
  const until = clock / 1000 + 3600;
  const ban = banLogins(wx, until);
  const refused = { code: "login_failed", statusCode: 403, error: "user_banned" };
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  assert.equal(wx.wxLogins, 1);
  // Tokens the stand-in issuer does not know land in storage (another client on it, say):
  // their access token is refused 401 invalid_token, their refresh token 400 invalid_grant.
  wx.storage.set("weauth.tokens", JSON.stringify({ accessToken: "at-stale", refreshToken: "rt-stale" }));
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  assert.equal(wx.count("/v1/token/refresh"), 1, "the refresh was tried");
  assert.equal(wx.wxLogins, 1, "the login the refresh fell back to is held too: no code spent");
  assert.equal(wx.count("/v1/login"), 1);
  assert.equal(wx.storage.has("weauth.tokens"), false, "the refused tokens are dropped");
  // An explicit login() asks again, and ends the hold once it succeeds.
  ban.lift();
  await client.login();
  assert.equal(wx.wxLogins, 2);
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(issuer.logins, 1);
});

test("request_during_a_ban_hold_refresh_token_past_its_grace_rejects_held_no_wx_login", async () => {
  const g = graceSetup({ retry: { attempts: 2 } });
  const { issuer, wx, client } = g;
  await client.login();
  const old = storedPair(wx);
  issuer.expireAccessTokens();
  loseRefreshAnswers(g, 2, "timeout");
  await assert.rejects(client.request({ url: "/api/x" }), { code: "network" });
  assert.deepEqual(storedPair(wx), old, "the tokens are kept");
  // An explicit login() refused for a ban holds the logins requests start; the tokens stay.
  const until = g.now() / 1000 + 3600;
  wx.faults.unshift((req) =>
    req.path === "/v1/login"
      ? { statusCode: 403, data: { error: "user_banned", error_description: "banned", until } }
      : undefined,
  );
  const refused = { code: "login_failed", statusCode: 403, error: "user_banned" };
  await assert.rejects(client.login(), refused);
  assert.equal(wx.wxLogins, 2);
  assert.deepEqual(storedPair(wx), old);
  // Past the refresh token's grace the refresh turns into a login, which the ban holds.
  g.advance(60_000);
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  assert.equal(g.presented().length, 2, "the lapsed refresh token is not presented again");
  assert.equal(wx.wxLogins, 2, "no wx.login code spent on the answer known in advance");
  assert.equal(wx.storage.has("weauth.tokens"), false);
  assert.equal(issuer.reuses, 0);
});

/**
 * The session revoked elsewhere: `a`'s refresh is refused and turns into a login in `a`'s
 * flight, which `b`'s request joins while the refresh is held; both end refused as `refused`,
 * after one refresh.
 */
async function refreshTurnedLoginRefused(
  issuer: FakeIssuer,
  wx: WxStub,
  a: WeauthClient,
  b: WeauthClient,
  refused: object,
): Promise<void> {
  issuer.revokeAll();
  const release = holdAnswers(wx, "/v1/token/refresh");
  const fromA = a.request({ url: "/api/a" });
  await eventually("a's refresh is sent", () => wx.count("/v1/token/refresh") === 1);
  const fromB = b.request({ url: "/api/b" });
  release();
  await assert.rejects(fromA, refused);
  await assert.rejects(fromB, refused);
  assert.equal(wx.count("/v1/token/refresh"), 1, "one refresh, b waited for a's");
}

test("request_joining_another_clients_refresh_during_a_login_hold_no_wx_login", async () => {
  // b, a copy of the package in an independent sub-package, on a's storage.
  const { issuer, wx, client: a } = setup();
  const b = clientOfSecondCopy(wx);
  await a.login();
  assert.equal((await b.request({ url: "/api/x" })).statusCode, 200); // b reads the tokens
  // b's login() (the user tapped "log in") is refused for the user's risk: the logins the
  // requests on this storage would start are held; the tokens stay.
  let refusing = true;
  wx.faults.push((req) =>
    req.path === "/v1/login" && refusing ? { statusCode: 403, data: { error: "user_risky" } } : undefined,
  );
  const refused = { code: "login_failed", statusCode: 403, error: "user_risky" };
  await assert.rejects(b.login(), refused);
  assert.equal(wx.wxLogins, 2);
  // The session is revoked (elsewhere): a's refresh is refused invalid_grant, and b's request
  // waits for a's refresh, in whose flight the login it turns into would run.
  await refreshTurnedLoginRefused(issuer, wx, a, b, refused);
  assert.equal(wx.wxLogins, 2, "no wx.login code spent on the answer known in advance");
  assert.equal(wx.count("/v1/login"), 2);
  assert.equal(wx.storage.has("weauth.tokens"), false, "the refused tokens are dropped");
  // login() asks again, on either copy; once it succeeds the hold is over for both.
  refusing = false;
  await b.login();
  assert.equal(wx.wxLogins, 3);
  assert.equal((await a.request({ url: "/api/a" })).statusCode, 200);
  assert.equal(wx.wxLogins, 3);
  assert.equal(issuer.reuses, 0);
});

test("request_refresh_408_retried_without_a_login", async () => {
  const { issuer, wx, client, sleeps } = setup();
  await client.login();
  issuer.expireAccessTokens();
  let slow = 1;
  wx.faults.push((req) =>
    req.path === "/v1/token/refresh" && slow-- > 0
      ? { statusCode: 408, data: { error: "request_timeout" } }
      : undefined,
  );
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(wx.count("/v1/token/refresh"), 2);
  assert.deepEqual(sleeps, [375]);
  assert.equal(wx.wxLogins, 1, "the refresh token was not spent: a 408 is no reason to log in");
  assert.equal(issuer.logins, 1);
});

test("request_refresh_refused_404_by_a_proxy_rejects_refresh_failed_tokens_kept_no_login", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  const before = wx.storage.get("weauth.tokens");
  issuer.expireAccessTokens();
  let misrouted = true;
  wx.faults.push((req) =>
    req.path === "/v1/token/refresh" && misrouted
      ? { statusCode: 404, data: "<html><body>404 Not Found</body></html>" }
      : undefined,
  );
  await assert.rejects(client.request({ url: "/api/x" }), { code: "refresh_failed", statusCode: 404 });
  assert.equal(wx.count("/v1/token/refresh"), 1, "a 404 is not retried");
  assert.equal(wx.wxLogins, 1, "no wx.login code spent on a proxy's answer");
  assert.equal(wx.storage.get("weauth.tokens"), before, "the tokens are kept: not a logout");
  assert.equal(client.isLoggedIn(), true);
  // The proxy mended: the same refresh token still works, and the session goes on.
  misrouted = false;
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(wx.wxLogins, 1);
  assert.equal(issuer.logins, 1);
  assert.equal(issuer.reuses, 0);
});

test("request_refresh_refused_not_about_the_token_rejects_refresh_failed_with_its_error_no_login", async () => {
  const refusals = [
    { statusCode: 400, data: { error: "invalid_request", error_description: "malformed JSON" } },
    { statusCode: 403, data: { error: "access_denied", error_description: "not from here" } },
    { statusCode: 413, data: { error: "payload_too_large" } },
    { statusCode: 401, data: "", header: { "WWW-Authenticate": 'Basic realm="proxy"' } },
  ];
  for (const refusal of refusals) {
    const { issuer, wx, client } = setup();
    await client.login();
    const before = wx.storage.get("weauth.tokens");
    issuer.expireAccessTokens();
    wx.faults.push((req) => (req.path === "/v1/token/refresh" ? refusal : undefined));
    const error = typeof refusal.data === "object" ? refusal.data.error : undefined;
    await assert.rejects(client.request({ url: "/api/x" }), { code: "refresh_failed", statusCode: refusal.statusCode, error });
    assert.equal(wx.wxLogins, 1, `${refusal.statusCode}: no login`);
    assert.equal(wx.storage.get("weauth.tokens"), before, `${refusal.statusCode}: tokens kept`);
  }
});

test("request_refresh_refused_with_relogin_true_logs_in_once", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.expireAccessTokens();
  let refused = 1;
  wx.faults.push((req) =>
    req.path === "/v1/token/refresh" && refused-- > 0
      ? { statusCode: 400, data: { error: "session_gone", relogin: true } }
      : undefined,
  );
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(wx.wxLogins, 2);
  assert.equal(issuer.logins, 2);
});

test("request_after_another_refusal_logs_in_again", async () => {
  // A code refused (WeChat's 40029, say) says nothing of the next one: not held.
  const { wx, client } = setup();
  wx.faults.push((req) =>
    req.path === "/v1/login" ? { statusCode: 400, data: { error: "invalid_grant" } } : undefined,
  );
  await assert.rejects(client.request({ url: "/api/x" }), { error: "invalid_grant" });
  await assert.rejects(client.request({ url: "/api/x" }), { error: "invalid_grant" });
  assert.equal(wx.wxLogins, 2);
});

for (const error of ["user_risky", "access_denied"] as const) {
  test(`request_after_a_login_refused_${error}_fails_at_once_for_60s_login_asks_again`, async () => {
    let clock = Date.UTC(2026, 11, 6);
    const { issuer, wx, client } = setup({ now: () => clock });
    let refusing = true;
    wx.faults.push((req) =>
      req.path === "/v1/login" && refusing
        ? { statusCode: 403, data: { error, error_description: "refused by WeChat's risk control" } }
        : undefined,
    );
    const refused = { code: "login_failed", statusCode: 403, error };
    await assert.rejects(client.request({ url: "/api/x" }), refused);
    await assert.rejects(client.request({ url: "/api/y" }), refused);
    assert.equal(wx.wxLogins, 1, "no wx.login code spent on the answer known in advance");
    assert.equal(wx.count("/v1/login"), 1);
    // An explicit login() asks again (the user may have verified themselves in WeChat).
    await assert.rejects(client.login(), refused);
    assert.equal(wx.wxLogins, 2);
    clock += 60_000 - 1;
    await assert.rejects(client.request({ url: "/api/x" }), refused);
    assert.equal(wx.wxLogins, 2);
    // After 60 s a request asks again.
    clock += 1;
    refusing = false;
    assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
    assert.equal(wx.wxLogins, 3);
    assert.equal(issuer.logins, 1);
  });
}

test("login_wx_login_fails_rejects_wx_login_failed", async () => {
  const { wx, client } = setup();
  wx.loginFailure = "login:fail network";
  await assert.rejects(client.login(), { code: "wx_login_failed", message: "login:fail network" });
  assert.equal(wx.requests.length, 0);
});

test("login_network_failure_503_and_408_retried_with_backoff_each_attempt_a_new_code", async () => {
  const { issuer, wx, client, sleeps } = setup();
  const failures: StubAnswer[] = [
    { fail: "request:fail timeout" },
    { statusCode: 503, data: { error: "temporarily_unavailable" } },
    { statusCode: 408, data: { error: "request_timeout" } },
  ];
  wx.faults.push((req) => (req.path === "/v1/login" ? failures.shift() : undefined));
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(wx.count("/v1/login"), 4);
  assert.deepEqual(sleeps, [375, 750, 1500], "the refresh's backoff");
  // A code is single use, and one posted without an answer may have been spent: never twice.
  assert.equal(wx.wxLogins, 4);
  const codes = wx.requests.filter((r) => r.path === "/v1/login").map((r) => (r.data as Record<string, unknown>).code);
  assert.equal(new Set(codes).size, 4);
  assert.equal(issuer.logins, 1);
});

test("login_answered_500_or_the_issuers_502_is_not_retried", async () => {
  // The issuer answers 502 after its own retries of WeChat, or when WeChat refuses the app:
  // another attempt would spend a code (and a WeChat exchange) for the same answer.
  for (const [statusCode, error] of [
    [500, "server_error"],
    [502, "upstream_error"],
  ] as const) {
    const { wx, client, sleeps } = setup();
    wx.faults.push((req) => (req.path === "/v1/login" ? { statusCode, data: { error } } : undefined));
    await assert.rejects(client.login(), { code: "login_failed", statusCode, error });
    assert.equal(wx.wxLogins, 1, `${statusCode}`);
    assert.deepEqual(sleeps, []);
  }
});

test("login_waits_at_most_20s_for_its_answer", async () => {
  const { wx, client } = setup();
  const timeouts: Array<number | undefined> = [];
  const request = wx.request.bind(wx);
  wx.request = (option: WechatMiniprogram.RequestOption) => {
    if (option.url.endsWith("/v1/login")) {
      timeouts.push(option.timeout);
    }
    request(option);
  };
  await client.login();
  // Without it wx.request waits networkTimeout.request (60 s), five times over when the
  // login is retried on timeouts, with every request that needs the login waiting on it.
  assert.deepEqual(timeouts, [20000]);
});

test("login_failing_on_every_attempt_rejects_with_the_last_failure_then_asks_again", async () => {
  const { wx, client, sleeps } = setup({ retry: { attempts: 3 } });
  let busy = true;
  wx.faults.push((req) =>
    req.path === "/v1/login" && busy ? { statusCode: 503, data: { error: "temporarily_unavailable" } } : undefined,
  );
  await assert.rejects(client.login(), { code: "login_failed", statusCode: 503, error: "temporarily_unavailable" });
  assert.equal(wx.wxLogins, 3);
  assert.equal(sleeps.length, 2);
  // No Retry-After: nothing held.
  busy = false;
  await client.login();
  assert.equal(client.isLoggedIn(), true);
});

test("login_503_with_a_short_retry_after_waits_it_then_retries_with_a_new_code", async () => {
  const { issuer, wx, client, sleeps } = setup();
  let busy = 1;
  wx.faults.push((req) =>
    req.path === "/v1/login" && busy-- > 0
      ? { statusCode: 503, data: { error: "temporarily_unavailable" }, header: { "Retry-After": "1" } }
      : undefined,
  );
  await client.login();
  assert.deepEqual(sleeps, [1000]);
  assert.equal(wx.wxLogins, 2);
  assert.equal(issuer.logins, 1);
});

const retryAfterRefusals: Array<[string, { statusCode: number; data: { error: string; error_description?: string }; header: Record<string, string> }]> = [
  [
    "429_rate_limited",
    { statusCode: 429, data: { error: "rate_limited", error_description: "too many logins" }, header: { "Retry-After": "60" } },
  ],
  [
    "503_with_an_http_date",
    {
      statusCode: 503,
      data: { error: "temporarily_unavailable" },
      header: { "Retry-After": "Sun, 06 Dec 2026 00:01:00 GMT", Date: "Sun, 06 Dec 2026 00:00:00 GMT" },
    },
  ],
];
for (const [name, answer] of retryAfterRefusals) {
  test(`login_${name}_retry_after_holds_every_login_until_it_has_passed`, async () => {
    let clock = Date.UTC(2026, 11, 6);
    const { issuer, wx, client, sleeps } = setup({ now: () => clock });
    let limited = true;
    wx.faults.push((req) => (req.path === "/v1/login" && limited ? answer : undefined));
    const refused = { code: "login_failed", statusCode: answer.statusCode, error: answer.data.error };
    await assert.rejects(client.request({ url: "/api/x" }), refused);
    assert.deepEqual(sleeps, [], "60 s is more than a retry waits: not retried");
    assert.equal(wx.wxLogins, 1);
    // The issuer would answer now, but it asked not to be asked for 60 s: every login fails at
    // once, a request's and login()'s, without a wx.login or a post.
    limited = false;
    await assert.rejects(client.request({ url: "/api/x" }), refused);
    await assert.rejects(client.login(), refused);
    clock += 59_999;
    await assert.rejects(client.request({ url: "/api/y" }), refused);
    assert.equal(wx.wxLogins, 1);
    assert.equal(wx.count("/v1/login"), 1);
    clock += 1;
    assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
    assert.equal(wx.wxLogins, 2);
    assert.equal(issuer.logins, 1);
  });
}

test("login_retry_after_of_an_hour_holds_the_logins_ten_minutes_at_most", async () => {
  let clock = Date.UTC(2026, 11, 6);
  const { wx, client } = setup({ now: () => clock });
  let limited = true;
  wx.faults.push((req) =>
    req.path === "/v1/login" && limited ? { statusCode: 429, data: { error: "rate_limited" }, header: { "Retry-After": "3600" } } : undefined,
  );
  await assert.rejects(client.login(), { statusCode: 429 });
  limited = false;
  clock += 10 * 60 * 1000 - 1;
  await assert.rejects(client.login(), { statusCode: 429 });
  assert.equal(wx.wxLogins, 1);
  clock += 1;
  await client.login();
  assert.equal(wx.wxLogins, 2);
});

test("login_retry_after_received_by_another_copy_holds_this_ones_logins_a_refresh_turned_login_too", async () => {
  let clock = Date.UTC(2026, 11, 6);
  // b, a copy of the package in an independent sub-package, on a's storage.
  const { issuer, wx, client: a } = setup({ now: () => clock });
  const b = clientOfSecondCopy(wx, { now: () => clock });
  await a.login();
  assert.equal((await b.request({ url: "/api/x" })).statusCode, 200); // b reads the tokens
  // b's login() (the user tapped "log in") is answered 429 with a Retry-After of 60 s, longer
  // than a retry waits: given up on, and held.
  let limited = true;
  wx.faults.push((req) =>
    req.path === "/v1/login" && limited
      ? { statusCode: 429, data: { error: "rate_limited" }, header: { "Retry-After": "60" } }
      : undefined,
  );
  const refused = { code: "login_failed", statusCode: 429, error: "rate_limited" };
  await assert.rejects(b.login(), refused);
  assert.equal(wx.wxLogins, 2);
  // The issuer would answer now, but it asked the device not to ask for 60 s. The session is
  // revoked (elsewhere): a's refresh is refused invalid_grant and turns into a login in a's
  // flight, which b's request joins; that login heeds the Retry-After b received.
  limited = false;
  await refreshTurnedLoginRefused(issuer, wx, a, b, refused);
  assert.equal(wx.wxLogins, 2, "no wx.login code spent within the issuer's window");
  assert.equal(wx.count("/v1/login"), 2);
  // a's own logins are held as well, a request's and login()'s.
  await assert.rejects(a.request({ url: "/api/a" }), refused);
  await assert.rejects(a.login(), refused);
  clock += 59_999;
  await assert.rejects(a.request({ url: "/api/a" }), refused);
  assert.equal(wx.wxLogins, 2);
  // Once it has passed, either copy logs in.
  clock += 1;
  assert.equal((await a.request({ url: "/api/a" })).statusCode, 200);
  assert.equal(wx.wxLogins, 3);
  assert.equal((await b.request({ url: "/api/b" })).statusCode, 200);
  assert.equal(wx.wxLogins, 3);
  assert.equal(issuer.reuses, 0);
});

test("refresh_retry_after_received_by_another_copy_holds_this_ones_refreshes_tokens_kept", async () => {
  let clock = Date.UTC(2026, 11, 6);
  const { issuer, wx, client: a } = setup({ now: () => clock });
  const b = clientOfSecondCopy(wx, { now: () => clock });
  await a.login();
  assert.equal((await b.request({ url: "/api/x" })).statusCode, 200); // b reads the tokens
  const before = wx.storage.get("weauth.tokens");
  issuer.expireAccessTokens();
  // b's refresh is answered 429 with a Retry-After of 30 s (the token not taken): given up on.
  wx.faults.push((req) =>
    req.path === "/v1/token/refresh" && clock < Date.UTC(2026, 11, 6) + 30_000
      ? { statusCode: 429, data: { error: "rate_limited" }, header: { "Retry-After": "30" } }
      : undefined,
  );
  const refused = { code: "refresh_failed", statusCode: 429, error: "rate_limited" };
  await assert.rejects(b.request({ url: "/api/b" }), refused);
  assert.equal(wx.count("/v1/token/refresh"), 1);
  // Within the window a's refresh fails at once too, without asking; the tokens are kept.
  clock += 29_999;
  await assert.rejects(a.request({ url: "/api/a" }), refused);
  assert.equal(wx.count("/v1/token/refresh"), 1, "a heeds the Retry-After b received");
  assert.equal(wx.storage.get("weauth.tokens"), before, "the tokens are kept");
  // Once it has passed, the same refresh token is presented, once.
  clock += 1;
  assert.equal((await a.request({ url: "/api/a" })).statusCode, 200);
  assert.equal(wx.count("/v1/token/refresh"), 2);
  assert.equal(wx.wxLogins, 1);
  assert.equal(issuer.reuses, 0);
});

test("logout_during_a_logins_backoff_rejects_it_logged_out_no_more_wx_login", async () => {
  let during: (() => Promise<void>) | undefined;
  const { wx, client } = setup({
    sleep: async () => {
      await during?.();
      await tick();
    },
  });
  wx.faults.push((req) => (req.path === "/v1/login" ? { fail: "request:fail timeout" } : undefined));
  during = () => client.logout();
  const outcome = await settled(client.login());
  assert.equal(outcome, "logged_out");
  assert.equal(wx.wxLogins, 1);
  assert.equal(wx.count("/v1/login"), 1);
});

test("tokens_persisted_new_client_on_same_storage_uses_them", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  const second = createClient({ baseUrl: BASE, wx });
  const res = await second.request({ url: "/api/x" });
  assert.equal(res.statusCode, 200);
  assert.equal(issuer.logins, 1);
});

test("storage_refusing_the_refreshed_pair_removes_the_spent_one_next_launch_logs_in_cleanly", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.expireAccessTokens();
  wx.setStorageFailure = "setStorageSync:fail exceed storage max size";
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(wx.count("/v1/token/refresh"), 1);
  assert.equal(wx.storage.has("weauth.tokens"), false, "the pair with the spent refresh token is gone");
  // This run goes on with the tokens in memory.
  assert.equal(client.isLoggedIn(), true);
  assert.equal((await client.request({ url: "/api/y" })).statusCode, 200);
  // The next launch (storage working again, the access tokens it might hold expired).
  wx.setStorageFailure = undefined;
  issuer.expireAccessTokens();
  const relaunched = createClient({ baseUrl: BASE, wx });
  assert.equal((await relaunched.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(issuer.reuses, 0, "the spent refresh token must not be presented");
  assert.equal(issuer.revokedSessions.size, 0);
  assert.equal(issuer.logins, 2, "a clean login instead");
});

test("storage_refusing_both_write_and_removal_request_still_served_from_memory", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.expireAccessTokens();
  wx.setStorageFailure = "setStorageSync:fail";
  wx.removeStorageFailure = "removeStorageSync:fail";
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal((await client.request({ url: "/api/y" })).statusCode, 200);
  assert.equal(wx.count("/v1/token/refresh"), 1);
  assert.equal(issuer.reuses, 0);
});

test("logout_posts_bearer_and_clears_storage", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  const token = JSON.parse(wx.storage.get("weauth.tokens")!).accessToken;
  await client.logout();
  const sent = wx.requests.find((r) => r.path === "/v1/logout")!;
  assert.equal(bearer(sent), `Bearer ${token}`);
  assert.equal(wx.storage.has("weauth.tokens"), false);
  assert.equal(client.isLoggedIn(), false);
  assert.equal(issuer.revokedSessions.size, 1);
});

test("logout_network_failure_still_clears", async () => {
  const { wx, client } = setup();
  await client.login();
  wx.faults.push(() => ({ fail: "request:fail" }));
  await client.logout();
  assert.equal(wx.storage.has("weauth.tokens"), false);
});

test("logout_during_refresh_refreshed_tokens_not_stored", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.expireAccessTokens();
  const pending = client.request({ url: "/api/x" });
  const outcome = pending.then(
    () => undefined,
    (e: unknown) => e,
  );
  // Let the first 401 arrive and the refresh be sent, then log out before its answer.
  while (wx.count("/v1/token/refresh") === 0) {
    await tick();
  }
  await client.logout();
  const err = await outcome;
  assert.ok(err instanceof WeauthError);
  assert.equal((err as WeauthError).code, "logged_out");
  assert.equal(wx.storage.has("weauth.tokens"), false);
  assert.equal(client.isLoggedIn(), false);
  assert.equal(issuer.revokedSessions.size, 1, "the session ends at the issuer");
  // The logout's renewal must not present the refresh token the refresh in flight presented
  // (the stand-in issuer has no reuse grace, as with WEAUTH_REFRESH_REUSE_GRACE=0s).
  assert.equal(issuer.reuses, 0);
});

test("logout_while_a_request_waits_for_the_refresh_rejects_it_logged_out_no_login", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.expireAccessTokens();
  const release = holdAnswers(wx, "/v1/token/refresh");
  const first = settled(client.request({ url: "/api/first" }));
  while (wx.count("/v1/token/refresh") === 0) {
    await tick();
  }
  // Waits at the top of request() for the refresh in flight.
  const waiting = settled(client.request({ url: "/api/waiting" }));
  await tick();
  await client.logout();
  release();
  assert.equal(await first, "logged_out");
  assert.equal(await waiting, "logged_out");
  assert.equal(wx.wxLogins, 1, "a request from before the logout must not log the user back in");
  assert.equal(wx.count("/v1/login"), 1);
  assert.equal(wx.count("/api/waiting"), 0);
  assert.equal(client.isLoggedIn(), false);
  assert.equal(wx.storage.has("weauth.tokens"), false);
  assert.equal(issuer.reuses, 0);
});

test("logout_before_a_requests_401_arrives_rejects_it_logged_out_no_login", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.expireAccessTokens();
  const release = holdAnswers(wx, "/api/x", "every");
  const pending = settled(client.request({ url: "/api/x" }));
  while (wx.count("/api/x") === 0) {
    await tick();
  }
  await client.logout();
  release(); // the 401 of the token sent before the logout
  assert.equal(await pending, "logged_out");
  assert.equal(wx.wxLogins, 1);
  assert.equal(wx.count("/v1/login"), 1);
  assert.equal(wx.count("/v1/token/refresh"), 1, "only the logout's own renewal");
  assert.equal(client.isLoggedIn(), false);
});

test("logout_while_a_relogin_waits_for_a_refresh_rejects_it_logged_out_no_login", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  const releaseDecrypt = holdAnswers(wx, "/v1/me/decrypt", "every");
  const releaseRefresh = holdAnswers(wx, "/v1/token/refresh");
  wx.faults.push((req) =>
    req.path === "/v1/me/decrypt" ? { statusCode: 400, data: { error: "session_key_mismatch", relogin: true } } : undefined,
  );
  const decrypt = settled(client.request({ url: "/v1/me/decrypt", method: "POST", data: {} }));
  while (wx.count("/v1/me/decrypt") === 0) {
    await tick();
  }
  issuer.expireAccessTokens();
  const other = settled(client.request({ url: "/api/x" }));
  while (wx.count("/v1/token/refresh") === 0) {
    await tick();
  }
  releaseDecrypt(); // its relogin waits for the refresh (which keeps the old session_key)
  await tick();
  await client.logout();
  releaseRefresh();
  assert.equal(await other, "logged_out");
  assert.equal(await decrypt, "logged_out");
  assert.equal(wx.wxLogins, 1);
  assert.equal(client.isLoggedIn(), false);
  assert.equal(issuer.reuses, 0);
});

test("logout_while_login_waits_for_a_refresh_rejects_it_logged_out_no_login", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.expireAccessTokens();
  const release = holdAnswers(wx, "/v1/token/refresh");
  const pending = settled(client.request({ url: "/api/x" }));
  while (wx.count("/v1/token/refresh") === 0) {
    await tick();
  }
  const login = settled(client.login()); // waits for the refresh to settle
  await tick();
  await client.logout();
  release();
  assert.equal(await pending, "logged_out");
  assert.equal(await login, "logged_out");
  assert.equal(wx.wxLogins, 1);
  assert.equal(client.isLoggedIn(), false);
  assert.equal(issuer.reuses, 0);
});

test("logout_during_a_refreshs_backoff_leaves_the_renewal_to_it_session_ended_no_reuse", async () => {
  let during: (() => Promise<void>) | undefined;
  const { issuer, wx, client } = setup({
    sleep: async () => {
      const act = during;
      during = undefined;
      await act?.();
      await tick();
    },
  });
  await client.login();
  issuer.expireAccessTokens();
  let lost = 1;
  wx.faults.push((req) => (req.path === "/v1/token/refresh" && lost-- > 0 ? { fail: "request:fail timeout" } : undefined));
  during = () => client.logout(); // its /v1/logout is refused: the access token has expired
  const outcome = await settled(client.request({ url: "/api/x" }));
  assert.equal(outcome, "logged_out");
  // The refresh token was presented once by the refresh (whose answer was lost), then by its
  // own retry — whose pair ends the session — and by nobody else.
  assert.equal(wx.count("/v1/token/refresh"), 2);
  assert.equal(issuer.reuses, 0);
  assert.equal(issuer.revokedSessions.size, 1, "the session ends at the issuer");
  assert.equal(wx.storage.has("weauth.tokens"), false);
  assert.equal(wx.wxLogins, 1);
});

test("logout_after_the_access_token_expired_still_ends_the_session", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  // The app idle past the access token's lifetime: the logout's bearer is refused (401).
  issuer.expireAccessTokens();
  await client.logout();
  assert.equal(issuer.revokedSessions.size, 1, "the session must end at the issuer");
  assert.equal(wx.count("/v1/logout"), 2, "refused once, then sent with a renewed token");
  assert.equal(issuer.reuses, 0);
  assert.equal(client.isLoggedIn(), false);
});

test("logout_during_a_login_ends_the_session_that_login_got", async () => {
  const { issuer, wx, client } = setup();
  const release = holdAnswers(wx, "/v1/login", "every");
  const launch = settled(client.login());
  while (wx.count("/v1/login") === 0) {
    await tick();
  }
  await client.logout();
  release();
  assert.equal(await launch, "logged_out");
  assert.equal(issuer.logins, 1);
  assert.equal(issuer.revokedSessions.size, 1, "the session the login got must end too");
  assert.equal(wx.storage.has("weauth.tokens"), false);
});

test("login_after_logout_does_not_join_the_login_from_before_it", async () => {
  const { wx, client } = setup();
  const launch = client.login().catch((e: unknown) => e); // App.onLaunch's silent login
  await client.logout(); // the user taps "log out" before it finished
  const again = await settled(client.login());
  await launch;
  assert.equal(again, "ok");
  assert.equal(client.isLoggedIn(), true);
  assert.equal(wx.wxLogins, 2);
});

test("login_after_a_logout_during_a_refresh_settles_while_the_issuer_holds_the_logouts", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  issuer.expireAccessTokens();
  const before = watched(client.request({ url: "/api/x" }));
  while (wx.count("/v1/token/refresh") === 0) {
    await tick();
  }
  // The issuer (or a dead network) never answers a logout: wx.request's own wait is 60 s.
  holdAnswers(wx, "/v1/logout", "every");
  void client.logout();
  const after = watched(client.login());
  await eventually("the request from before the logout settles", () => before.value !== undefined);
  await eventually("login() after the logout settles", () => after.value !== undefined);
  assert.equal(before.value, "logged_out");
  assert.equal(after.value, "ok");
  assert.equal(client.isLoggedIn(), true);
  // The session the overtaken refresh got is ended all the same, in the background.
  assert.equal(wx.count("/v1/logout"), 2, "logout()'s own, and the refreshed pair's");
  assert.equal(issuer.reuses, 0);
});

test("login_after_a_logout_during_a_login_settles_while_the_issuer_holds_the_logouts", async () => {
  const { issuer, wx, client } = setup();
  const release = holdAnswers(wx, "/v1/login");
  const launch = watched(client.login());
  while (wx.count("/v1/login") === 0) {
    await tick();
  }
  holdAnswers(wx, "/v1/logout", "every");
  void client.logout();
  const again = watched(client.login());
  release();
  await eventually("the login from before the logout settles", () => launch.value !== undefined);
  await eventually("login() after the logout settles", () => again.value !== undefined);
  assert.equal(launch.value, "logged_out");
  assert.equal(again.value, "ok");
  assert.equal(client.isLoggedIn(), true);
  assert.equal(issuer.logins, 2);
  assert.equal(wx.count("/v1/logout"), 1, "the overtaken login's session is being ended");
});

test("logout_posts_wait_at_most_5s_for_their_answers", async () => {
  const { issuer, wx, client } = setup();
  const timeouts: Array<[string, number | undefined]> = [];
  const request = wx.request.bind(wx);
  wx.request = (option: WechatMiniprogram.RequestOption) => {
    const path = option.url.slice(BASE.length);
    if (path === "/v1/logout" || path === "/v1/token/refresh") {
      timeouts.push([path, option.timeout]);
    }
    request(option);
  };
  await client.login();
  issuer.expireAccessTokens();
  await client.logout();
  // The refused logout, the renewal and the logout with the renewed token: none waits
  // wx.request's default 60 s, which logout()'s caller would wait three times over.
  assert.deepEqual(timeouts, [
    ["/v1/logout", 5000],
    ["/v1/token/refresh", 5000],
    ["/v1/logout", 5000],
  ]);
  assert.equal(issuer.revokedSessions.size, 1);
});

test("two_clients_on_one_storage_never_present_a_rotated_refresh_token", async () => {
  // E.g. a copy of the package in an independent sub-package, on the same storage key.
  const { issuer, wx, client: a } = setup();
  const b = createClient({ baseUrl: BASE, wx, sleep: async () => tick(), random: () => 0.5 });
  await a.login();
  assert.equal((await b.request({ url: "/api/x" })).statusCode, 200); // b reads the tokens
  issuer.expireAccessTokens();
  assert.equal((await a.request({ url: "/api/x" })).statusCode, 200); // a rotates and stores
  issuer.expireAccessTokens();
  // b's tokens in memory are a's old ones: it must take the stored pair, not reuse its own.
  assert.equal((await b.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(issuer.reuses, 0, "b presented the refresh token a had rotated");
  assert.equal(issuer.revokedSessions.size, 0);
  assert.equal(issuer.logins, 1);
});

test("two_copies_of_the_package_on_one_storage_refreshing_at_once_share_one_refresh", async () => {
  // The stand-in issuer has no reuse grace (WEAUTH_REFRESH_REUSE_GRACE=0s): a refresh token
  // presented twice revokes the session at once.
  const { issuer, wx, client: a } = setup();
  const copy = secondCopy();
  assert.notEqual(copy.createClient, createClient, "a second copy of the package");
  const b = copy.createClient({ baseUrl: BASE, wx, sleep: async () => tick(), random: () => 0.5 });
  await a.login();
  assert.equal((await b.request({ url: "/api/x" })).statusCode, 200); // b reads the tokens
  issuer.expireAccessTokens();
  const all = await Promise.all([
    a.request({ url: "/api/a1" }),
    b.request({ url: "/api/b1" }),
    a.request({ url: "/api/a2" }),
    b.request({ url: "/api/b2" }),
  ]);
  assert.deepEqual(
    all.map((r) => r.statusCode),
    [200, 200, 200, 200],
  );
  assert.equal(wx.count("/v1/token/refresh"), 1, "one refresh for both copies");
  assert.equal(issuer.reuses, 0);
  assert.equal(issuer.revokedSessions.size, 0);
  assert.equal(issuer.logins, 1);
});

test("client_that_joined_another_clients_refresh_keeps_its_pair", async () => {
  const { issuer, wx, client: a } = setup();
  const b = createClient({ baseUrl: BASE, wx, sleep: async () => tick(), random: () => 0.5 });
  await a.login();
  assert.equal((await b.request({ url: "/api/x" })).statusCode, 200);
  issuer.expireAccessTokens();
  await Promise.all([a.request({ url: "/api/a" }), b.request({ url: "/api/b" })]);
  assert.equal(wx.count("/v1/token/refresh"), 1);
  // b's next request goes out with the pair a's refresh got, not with its expired token.
  assert.equal((await b.request({ url: "/api/next" })).statusCode, 200);
  assert.equal(wx.count("/api/next"), 1);
  assert.equal(wx.count("/v1/token/refresh"), 1);
  assert.equal(bearer(wx.requests.find((r) => r.path === "/api/next")!), `Bearer ${JSON.parse(wx.storage.get("weauth.tokens")!).accessToken}`);
});

/** A client of another copy of the package (as in an independent sub-package) on `wx`'s storage. */
function clientOfSecondCopy(wx: WxStub, extra: Partial<ClientOptions> = {}): WeauthClient {
  const copy = secondCopy();
  assert.notEqual(copy.createClient, createClient, "a second copy of the package");
  return copy.createClient({ baseUrl: BASE, wx, sleep: async () => tick(), random: () => 0.5, ...extra });
}

test("logout_in_another_copy_during_a_refresh_rejects_it_logged_out_nothing_stored", async () => {
  const { issuer, wx, client: a } = setup();
  const b = clientOfSecondCopy(wx);
  await a.login();
  assert.equal((await b.request({ url: "/api/x" })).statusCode, 200); // b reads the tokens
  // b's next request is refused (its access token revoked at the edge, say): b refreshes,
  // a waits for that refresh, and a logs out before its answer arrives.
  wx.faults.push((req) =>
    req.path === "/api/b" && wx.count("/api/b") === 1
      ? { statusCode: 401, data: { error: "invalid_token" }, header: { "WWW-Authenticate": "Bearer" } }
      : undefined,
  );
  const release = holdAnswers(wx, "/v1/token/refresh");
  const refreshing = settled(b.request({ url: "/api/b" }));
  while (wx.count("/v1/token/refresh") === 0) {
    await tick();
  }
  const waiting = settled(a.request({ url: "/api/a" }));
  await tick();
  await a.logout();
  release();
  assert.equal(await refreshing, "logged_out", "b's refresh was overtaken by a's logout");
  assert.equal(await waiting, "logged_out");
  assert.equal(wx.storage.has("weauth.tokens"), false, "the pair b's refresh got must not be stored");
  assert.equal(a.isLoggedIn(), false);
  assert.equal(b.isLoggedIn(), false);
  assert.equal(wx.wxLogins, 1, "nobody logs the user back in");
  assert.equal(wx.count("/api/a"), 0);
  assert.equal(issuer.revokedSessions.size, 1);
});

test("logout_in_another_copy_during_a_login_rejects_it_logged_out_session_ended", async () => {
  const { issuer, wx, client: a } = setup();
  const b = clientOfSecondCopy(wx);
  const release = holdAnswers(wx, "/v1/login", "every");
  const launch = settled(b.login());
  while (wx.count("/v1/login") === 0) {
    await tick();
  }
  await a.logout();
  release();
  assert.equal(await launch, "logged_out");
  assert.equal(wx.storage.has("weauth.tokens"), false, "b's login must not log the user back in");
  assert.equal(b.isLoggedIn(), false);
  assert.equal(issuer.logins, 1);
  assert.equal(issuer.revokedSessions.size, 1, "the session b's login got must end too");
});

test("logout_in_another_copy_before_a_requests_401_arrives_rejects_it_logged_out_no_login", async () => {
  const { issuer, wx, client: a } = setup();
  const b = clientOfSecondCopy(wx);
  await a.login();
  assert.equal((await b.request({ url: "/api/x" })).statusCode, 200);
  issuer.expireAccessTokens();
  const release = holdAnswers(wx, "/api/b", "every");
  const pending = settled(b.request({ url: "/api/b" }));
  while (wx.count("/api/b") === 0) {
    await tick();
  }
  await a.logout();
  release(); // the 401 of the token b sent before a's logout
  assert.equal(await pending, "logged_out");
  assert.equal(wx.wxLogins, 1);
  assert.equal(wx.count("/v1/login"), 1);
  assert.equal(wx.storage.has("weauth.tokens"), false);
  assert.equal(b.isLoggedIn(), false);
});

test("logout_in_another_copy_forgets_the_tokens_this_client_held", async () => {
  const { issuer, wx, client: a } = setup();
  const b = clientOfSecondCopy(wx);
  await a.login();
  assert.equal((await b.request({ url: "/api/x" })).statusCode, 200); // b holds them in memory
  await a.logout();
  assert.equal(issuer.revokedSessions.size, 1);
  assert.equal(b.isLoggedIn(), false, "b still held the tokens of the session a's logout ended");
  // A request b makes after the logout logs in as usual, without first sending the ended
  // session's access token.
  assert.equal((await b.request({ url: "/api/next" })).statusCode, 200);
  assert.equal(wx.count("/api/next"), 1);
  assert.equal(wx.wxLogins, 2);
});

test("refresh_waits_at_most_5s_for_its_answer_well_within_the_reuse_grace", async () => {
  const { issuer, wx, client } = setup();
  const timeouts: Array<number | undefined> = [];
  const request = wx.request.bind(wx);
  wx.request = (option: WechatMiniprogram.RequestOption) => {
    if (option.url.endsWith("/v1/token/refresh")) {
      timeouts.push(option.timeout);
    }
    request(option);
  };
  await client.login();
  issuer.expireAccessTokens();
  await client.request({ url: "/api/x" });
  // Without it wx.request waits networkTimeout.request (60 s) for a lost answer, and the
  // retry comes after the issuer's 10 s grace: read as theft, the session is revoked.
  assert.deepEqual(timeouts, [5000]);
});

/**
 * A client and the stand-in issuer on one fake clock, the issuer with its default reuse grace
 * (10 s); waits move the clock. `presented()` lists the refresh tokens the refreshes presented.
 */
function graceSetup(extra: Partial<ClientOptions> = {}) {
  let clock = Date.UTC(2026, 11, 6);
  const sleeps: number[] = [];
  const s = setup({
    now: () => clock,
    sleep: async (ms) => {
      sleeps.push(ms);
      clock += ms;
      await tick();
    },
    ...extra,
  });
  s.issuer.reuseGraceMs = 10_000;
  s.issuer.clock = () => clock;
  return {
    ...s,
    sleeps,
    now: () => clock,
    advance: (ms: number) => {
      clock += ms;
    },
    presented: () =>
      s.wx.requests
        .filter((r) => r.path === "/v1/token/refresh")
        .map((r) => (r.data as { refresh_token: string }).refresh_token),
  };
}

/**
 * The answers to the next `count` refreshes are lost after the issuer has handled them (a first
 * use rotates the token): after `afterMs` (the clock moved on) the client sees a timeout, or a
 * proxy's 503.
 */
function loseRefreshAnswers(
  g: ReturnType<typeof graceSetup>,
  count: number,
  how: "timeout" | "503",
  afterMs = 5000,
): void {
  g.wx.faults.push((req) => {
    if (req.path !== "/v1/token/refresh" || count <= 0) {
      return undefined;
    }
    count--;
    g.issuer.handle(req);
    g.advance(afterMs);
    return how === "timeout"
      ? { fail: "request:fail timeout" }
      : { statusCode: 503, data: "upstream connect error or disconnect/reset before headers" };
  });
}

for (const how of ["timeout", "503"] as const) {
  test(`refresh_answers_lost_${how}_until_past_the_reuse_grace_logs_in_instead_of_presenting_the_token_again`, async () => {
    const g = graceSetup();
    const { issuer, wx, client } = g;
    await client.login();
    const old = storedPair(wx);
    issuer.expireAccessTokens();
    loseRefreshAnswers(g, 2, how);
    assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
    // 0 s: rotated, lost (5 s); 5.375 s: the grace's repeat, lost (10.375 s). A third attempt
    // (11.125 s) would be past the issuer's grace: a theft, the session revoked.
    assert.deepEqual(g.presented(), [old.refreshToken, old.refreshToken]);
    assert.deepEqual(g.sleeps, [375], "no backoff for an attempt that cannot be made");
    assert.equal(issuer.reuses, 0, "no false theft signal");
    assert.equal(issuer.revokedSessions.size, 0);
    assert.equal(wx.wxLogins, 2, "one login instead");
    assert.equal(issuer.logins, 2);
    assert.notEqual(storedPair(wx).refreshToken, old.refreshToken);
  });
}

test("refresh_retry_presents_the_token_until_the_grace_less_2s_after_its_first_presentation", async () => {
  // The first answer lost after 7624 ms: the retry (375 ms of backoff later) at 7999 ms.
  const within = graceSetup();
  await within.client.login();
  const old = storedPair(within.wx);
  within.issuer.expireAccessTokens();
  loseRefreshAnswers(within, 1, "timeout", 7624);
  assert.equal((await within.client.request({ url: "/api/x" })).statusCode, 200);
  assert.deepEqual(within.presented(), [old.refreshToken, old.refreshToken]);
  assert.equal(within.issuer.repeats, 1, "the issuer's grace answered the retry");
  assert.equal(within.issuer.reuses, 0);
  assert.equal(within.wx.wxLogins, 1, "no login");
  // Lost after 7625 ms: the retry would be at 8000 ms, 2 s short of the grace: a login instead.
  const past = graceSetup();
  await past.client.login();
  const pastOld = storedPair(past.wx);
  past.issuer.expireAccessTokens();
  loseRefreshAnswers(past, 1, "timeout", 7625);
  assert.equal((await past.client.request({ url: "/api/x" })).statusCode, 200);
  assert.deepEqual(past.presented(), [pastOld.refreshToken]);
  assert.deepEqual(past.sleeps, []);
  assert.equal(past.wx.wxLogins, 2);
  assert.equal(past.issuer.reuses, 0);
});

test("refresh_reuse_grace_option_0s_no_retry_after_a_lost_answer_a_login", async () => {
  // WEAUTH_REFRESH_REUSE_GRACE=0s: every second presentation is a theft.
  const g = graceSetup({ refreshReuseGraceMs: 0 });
  g.issuer.reuseGraceMs = 0;
  await g.client.login();
  g.issuer.expireAccessTokens();
  loseRefreshAnswers(g, 1, "timeout", 100);
  assert.equal((await g.client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(g.presented().length, 1);
  assert.equal(g.issuer.reuses, 0);
  assert.equal(g.wx.wxLogins, 2);
  // A longer grace lets the retries go on.
  const long = graceSetup({ refreshReuseGraceMs: 30_000 });
  long.issuer.reuseGraceMs = 30_000;
  await long.client.login();
  long.issuer.expireAccessTokens();
  loseRefreshAnswers(long, 2, "timeout");
  assert.equal((await long.client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(long.presented().length, 3);
  assert.equal(long.issuer.repeats, 2);
  assert.equal(long.wx.wxLogins, 1);
});

test("refresh_reuse_grace_option_refused_unless_a_number_of_ms", () => {
  for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY, "10s" as unknown as number]) {
    assert.throws(() => setup({ refreshReuseGraceMs: bad }), TypeError);
  }
});

test("retry_option_members_given_as_undefined_take_the_defaults", async () => {
  const { wx, client, sleeps } = setup({
    retry: { attempts: undefined, baseDelayMs: undefined, maxDelayMs: undefined },
  });
  // More failures than the default 5 attempts (and a bound, should the attempts be lost).
  let failing = 10;
  wx.faults.push((req) => (req.path === "/v1/login" && failing-- > 0 ? { fail: "request:fail timeout" } : undefined));
  await assert.rejects(client.login(), { code: "network" });
  assert.equal(wx.wxLogins, 5);
  assert.deepEqual(sleeps, [375, 750, 1500, 3000]);
  // `maxDelayMs` kept: an hour's Retry-After is not waited, but held.
  const long = setup({ retry: { maxDelayMs: undefined } });
  let limited = 1;
  long.wx.faults.push((req) =>
    req.path === "/v1/login" && limited-- > 0
      ? { statusCode: 429, data: { error: "rate_limited" }, header: { "Retry-After": "3600" } }
      : undefined,
  );
  await assert.rejects(long.client.login(), { code: "login_failed", statusCode: 429 });
  assert.deepEqual(long.sleeps, []);
  assert.equal(long.wx.wxLogins, 1);
});

test("retry_option_refused_unless_finite_numbers_of_0_or_more", () => {
  for (const key of ["attempts", "baseDelayMs", "maxDelayMs"] as const) {
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY, "5" as unknown as number]) {
      assert.throws(
        () => setup({ retry: { [key]: bad } }),
        (e: unknown) => e instanceof TypeError && e.message.includes(`retry.${key}`),
        `${key}: ${String(bad)}`,
      );
    }
  }
  setup({ retry: { attempts: 0, baseDelayMs: 0, maxDelayMs: 0 } });
});

test("refresh_given_up_with_its_answers_lost_next_refresh_past_the_grace_logs_in_without_presenting", async () => {
  const g = graceSetup({ retry: { attempts: 2 } });
  const { issuer, wx, client } = g;
  await client.login();
  const old = storedPair(wx);
  issuer.expireAccessTokens();
  loseRefreshAnswers(g, 2, "timeout");
  await assert.rejects(client.request({ url: "/api/x" }), { code: "network" });
  assert.deepEqual(storedPair(wx), old, "the tokens are kept");
  g.advance(60_000);
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(g.presented().length, 2, "not presented a third time");
  assert.equal(issuer.reuses, 0);
  assert.equal(wx.wxLogins, 2);
});

test("refresh_token_left_unsettled_not_presented_again_once_the_device_clock_is_set_back", async () => {
  const g = graceSetup({ retry: { attempts: 2 } });
  const { issuer, wx, client } = g;
  await client.login();
  const old = storedPair(wx);
  issuer.expireAccessTokens();
  loseRefreshAnswers(g, 2, "timeout");
  await assert.rejects(client.request({ url: "/api/x" }), { code: "network" });
  assert.deepEqual(storedPair(wx), old, "the tokens are kept");
  // A minute on, the user sets the device clock back an hour: by the device's time the grace
  // has not even begun, but at the issuer it is long over.
  const issuerNow = g.now() + 60_000;
  issuer.clock = () => issuerNow;
  g.advance(60_000 - 3_600_000);
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(g.presented().length, 2, "not presented a third time");
  assert.equal(issuer.reuses, 0, "no false theft signal");
  assert.equal(issuer.revokedSessions.size, 0);
  assert.equal(wx.wxLogins, 2, "one login instead");
});

const heldLogins: Array<[string, (clock: number) => StubAnswer, { code: string; statusCode: number; error: string }]> = [
  [
    "retry_after",
    () => ({ statusCode: 429, data: { error: "rate_limited" }, header: { "Retry-After": "60" } }),
    { code: "login_failed", statusCode: 429, error: "rate_limited" },
  ],
  [
    "ban",
    (clock) => ({ statusCode: 403, data: { error: "user_banned", until: clock / 1000 + 3600 } }),
    { code: "login_failed", statusCode: 403, error: "user_banned" },
  ],
  [
    "user_risky",
    () => ({ statusCode: 403, data: { error: "user_risky" } }),
    { code: "login_failed", statusCode: 403, error: "user_risky" },
  ],
];
for (const [name, refusal, refused] of heldLogins) {
  test(`login_hold_${name}_no_longer_than_its_cap_when_the_device_clock_is_set_back`, async () => {
    let clock = Date.UTC(2026, 11, 6);
    const { wx, client } = setup({ now: () => clock });
    let refusing = true;
    wx.faults.push((req) => (req.path === "/v1/login" && refusing ? refusal(clock) : undefined));
    await assert.rejects(client.request({ url: "/api/x" }), refused);
    await assert.rejects(client.request({ url: "/api/x" }), refused);
    assert.equal(wx.wxLogins, 1, "held");
    // The user sets the device clock back an hour: the hold's end is now further away than
    // the hold could ever last (10 minutes; 60 s for user_risky), so it is over.
    clock -= 3_600_000;
    refusing = false;
    assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
    assert.equal(wx.wxLogins, 2);
  });
}

test("another_copy_refreshing_past_the_grace_of_a_token_left_unsettled_logs_in_without_presenting", async () => {
  const g = graceSetup({ retry: { attempts: 2 } });
  const { issuer, wx, client } = g;
  await client.login();
  issuer.expireAccessTokens();
  loseRefreshAnswers(g, 2, "503");
  await assert.rejects(client.request({ url: "/api/x" }), { code: "refresh_failed", statusCode: 503 });
  g.advance(60_000);
  // A copy of the package in an independent sub-package, on the same storage.
  const other = secondCopy().createClient({ baseUrl: BASE, wx, now: g.now });
  assert.equal((await other.request({ url: "/api/y" })).statusCode, 200);
  assert.equal(g.presented().length, 2, "the other copy did not present it");
  assert.equal(issuer.reuses, 0);
  assert.equal(wx.wxLogins, 2);
});

test("logout_past_the_grace_of_a_token_left_unsettled_does_not_present_it", async () => {
  const g = graceSetup({ retry: { attempts: 2 } });
  const { issuer, wx, client } = g;
  await client.login();
  issuer.expireAccessTokens();
  loseRefreshAnswers(g, 2, "timeout");
  await assert.rejects(client.request({ url: "/api/x" }), { code: "network" });
  g.advance(60_000);
  await client.logout(); // its /v1/logout is refused: the access token has expired
  assert.equal(wx.count("/v1/logout"), 1);
  assert.equal(g.presented().length, 2, "no renewal with the spent refresh token");
  assert.equal(issuer.reuses, 0);
  assert.equal(wx.storage.has("weauth.tokens"), false);
});

test("refresh_503_retry_after_held_past_the_grace_then_a_login_not_the_token_again", async () => {
  const g = graceSetup();
  const { issuer, wx, client } = g;
  await client.login();
  const before = wx.storage.get("weauth.tokens");
  issuer.expireAccessTokens();
  // A proxy's 503 after the issuer had rotated the token.
  let busy = 1;
  wx.faults.push((req) => {
    if (req.path !== "/v1/token/refresh" || busy-- <= 0) {
      return undefined;
    }
    issuer.handle(req);
    return { statusCode: 503, data: "", header: { "Retry-After": "30" } };
  });
  const refused = { code: "refresh_failed", statusCode: 503 };
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  assert.equal(wx.storage.get("weauth.tokens"), before, "the tokens are kept");
  g.advance(29_999);
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  g.advance(1);
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(g.presented().length, 1);
  assert.equal(issuer.reuses, 0);
  assert.equal(wx.wxLogins, 2);
});

/**
 * The refreshes answered, in turn, as `plan` says: a 429 (`Retry-After: 5`, the token not
 * taken); the issuer's own 503 `temporarily_unavailable` after 3 s (its store down: nothing
 * rotated); or an answer lost 5 s after the issuer handled the request (a timeout). Past the
 * plan the issuer answers. `times()` lists when each refresh was sent, from the start.
 */
function planRefreshAnswers(g: ReturnType<typeof graceSetup>, plan: Array<"429" | "503" | "lost">) {
  const start = g.now();
  const sentAt: number[] = [];
  g.wx.faults.push((req) => {
    if (req.path !== "/v1/token/refresh") {
      return undefined;
    }
    sentAt.push(g.now() - start);
    switch (plan.shift()) {
      case "429":
        return { statusCode: 429, data: { error: "rate_limited" }, header: { "Retry-After": "5" } };
      case "503":
        g.advance(3000);
        return {
          statusCode: 503,
          data: { error: "temporarily_unavailable", error_description: "the store is unavailable; retry" },
        };
      case "lost":
        g.issuer.handle(req);
        g.advance(5000);
        return { fail: "request:fail timeout" };
      default:
        return undefined;
    }
  });
  return { times: () => sentAt };
}

test("refresh_grace_window_runs_from_the_first_unsettled_attempt_not_from_a_429_before_it", async () => {
  const g = graceSetup();
  const { issuer, wx, client } = g;
  await client.login();
  const old = storedPair(wx);
  issuer.expireAccessTokens();
  const plan = planRefreshAnswers(g, ["429", "lost"]);
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  // 0 s: 429, not taken; 5 s: rotated, its answer lost (10 s); the retry at 10.75 s is within
  // the grace of that rotation (the window runs from 5 s to 13 s), not past one from 0 s.
  assert.deepEqual(plan.times(), [0, 5000, 10_750]);
  assert.deepEqual(g.presented(), [old.refreshToken, old.refreshToken, old.refreshToken]);
  assert.deepEqual(g.sleeps, [5000, 750]);
  assert.equal(issuer.repeats, 1, "the issuer's grace answered the retry");
  assert.equal(issuer.reuses, 0);
  assert.equal(wx.wxLogins, 1, "no login");
  assert.notEqual(storedPair(wx).refreshToken, old.refreshToken);
});

test("refresh_grace_window_from_the_first_unsettled_attempt_still_ends", async () => {
  const g = graceSetup();
  const { issuer, wx, client } = g;
  await client.login();
  const old = storedPair(wx);
  issuer.expireAccessTokens();
  const plan = planRefreshAnswers(g, ["429", "lost", "lost"]);
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  // The window from 5 s ends at 13 s: the retry after the second lost answer (15.75 s, then
  // 1.5 s of backoff) would come past it, so a login instead.
  assert.deepEqual(plan.times(), [0, 5000, 10_750]);
  assert.deepEqual(g.sleeps, [5000, 750]);
  assert.equal(issuer.reuses, 0);
  assert.equal(wx.wxLogins, 2);
  assert.notEqual(storedPair(wx).refreshToken, old.refreshToken);
});

test("refresh_answered_the_issuers_503_temporarily_unavailable_starts_no_window_no_login", async () => {
  const g = graceSetup();
  const { issuer, wx, client } = g;
  await client.login();
  const old = storedPair(wx);
  issuer.expireAccessTokens();
  // The issuer's store is down: every attempt is refused with its own JSON 503, over 17 s.
  const plan = planRefreshAnswers(g, ["503", "503", "503", "503", "503"]);
  const refused = { code: "refresh_failed", statusCode: 503, error: "temporarily_unavailable" };
  await assert.rejects(client.request({ url: "/api/x" }), refused);
  assert.deepEqual(plan.times(), [0, 3375, 7125, 11_625, 17_625]);
  assert.equal(wx.wxLogins, 1, "no login during the outage");
  assert.deepEqual(storedPair(wx), old, "the tokens are kept");
  // Over: the same refresh token is presented, and rotated as usual.
  g.advance(60_000);
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  assert.equal(g.presented().length, 6);
  assert.ok(g.presented().every((t) => t === old.refreshToken));
  assert.equal(wx.wxLogins, 1);
  assert.equal(issuer.reuses, 0);
  assert.notEqual(storedPair(wx).refreshToken, old.refreshToken);
});

test("refresh_issuers_503_then_a_lost_answer_window_from_the_lost_ones_sending", async () => {
  const g = graceSetup();
  const { issuer, wx, client } = g;
  await client.login();
  const old = storedPair(wx);
  issuer.expireAccessTokens();
  const plan = planRefreshAnswers(g, ["503", "503", "lost"]);
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  // 0 s and 3.375 s: the issuer's 503; 7.125 s: rotated, lost (12.125 s); the retry at
  // 13.625 s is within the window from 7.125 s (to 15.125 s).
  assert.deepEqual(plan.times(), [0, 3375, 7125, 13_625]);
  assert.equal(issuer.repeats, 1);
  assert.equal(issuer.reuses, 0);
  assert.equal(wx.wxLogins, 1);
  assert.notEqual(storedPair(wx).refreshToken, old.refreshToken);
});

test("relogin_answer_is_not_satisfied_by_a_refresh_of_the_same_session", async () => {
  const { issuer, wx, client } = setup();
  await client.login();
  const release = holdAnswers(wx, "/v1/me/decrypt");
  let first = true;
  wx.faults.push((req) => {
    if (req.path === "/v1/me/decrypt" && first) {
      first = false;
      return { statusCode: 400, data: { error: "session_key_mismatch", relogin: true } };
    }
    return undefined;
  });
  const decrypt = client.request({ url: "/v1/me/decrypt", method: "POST", data: {} });
  await tick();
  // Meanwhile another request finds the access token expired and refreshes (same session).
  issuer.expireAccessTokens();
  assert.equal((await client.request({ url: "/api/x" })).statusCode, 200);
  release();
  assert.equal((await decrypt).statusCode, 200);
  assert.equal(wx.wxLogins, 2, "a relogin needs a new wx.login (a new session_key)");
});

test("getPhoneNumber_denied_detail_rejects_without_request", async () => {
  const { wx, client } = setup();
  await assert.rejects(client.getPhoneNumber({ errMsg: "getPhoneNumber:fail user deny" }), {
    code: "user_denied",
  });
  assert.equal(wx.requests.length, 0);
});

test("getPhoneNumber_detail_posted_whole_resolves_with_data", async () => {
  const { wx, client } = setup();
  wx.faults.push((req) =>
    req.path === "/v1/me/phone"
      ? { statusCode: 200, data: { phoneNumber: "13800138000", purePhoneNumber: "13800138000", countryCode: "86" } }
      : undefined,
  );
  const detail = { code: "phone-code", errMsg: "getPhoneNumber:ok", cloudID: "c" };
  const phone = await client.getPhoneNumber(detail);
  assert.equal(phone.purePhoneNumber, "13800138000");
  assert.deepEqual(wx.requests.find((r) => r.path === "/v1/me/phone")!.data, detail);
});

test("getPhoneNumber_rate_limited_rejects_with_retry_after_ms_undefined_without_it", async () => {
  const { wx, client } = setup();
  let retryAfter: string | undefined = "30";
  wx.faults.push((req): StubAnswer | undefined =>
    req.path === "/v1/me/phone"
      ? {
          statusCode: 429,
          data: { error: "rate_limited", error_description: "too many WeChat calls for this user" },
          header: retryAfter === undefined ? {} : { "Retry-After": retryAfter },
        }
      : undefined,
  );
  const detail = { code: "phone-code", errMsg: "getPhoneNumber:ok" };
  await assert.rejects(client.getPhoneNumber(detail), (e: unknown) => {
    assert.ok(e instanceof WeauthError);
    assert.equal(e.code, "request_failed");
    assert.equal(e.statusCode, 429);
    assert.equal(e.error, "rate_limited");
    assert.equal(e.retryAfterMs, 30_000);
    return true;
  });
  retryAfter = undefined;
  await assert.rejects(client.getPhoneNumber(detail), (e: unknown) => {
    assert.ok(e instanceof WeauthError);
    assert.equal(e.code, "request_failed");
    assert.equal(e.statusCode, 429);
    assert.equal(e.retryAfterMs, undefined);
    return true;
  });
});

test("decrypt_rate_limited_retry_after_as_http_date_counted_from_the_answers_date", async () => {
  // The device clock is an hour fast: the wait is counted from the issuer's `Date`.
  const server = Date.UTC(2026, 11, 6, 12, 0, 0);
  const { wx, client } = setup({ now: () => server + 3600_000 });
  wx.faults.push((req) =>
    req.path === "/v1/me/decrypt"
      ? {
          statusCode: 429,
          data: { error: "rate_limited" },
          header: {
            Date: new Date(server).toUTCString(),
            "Retry-After": new Date(server + 45_000).toUTCString(),
          },
        }
      : undefined,
  );
  await assert.rejects(client.decrypt({ encryptedData: "x", iv: "y" }), {
    code: "request_failed",
    statusCode: 429,
    error: "rate_limited",
    retryAfterMs: 45_000,
  });
});

test("decrypt_refused_rejects_request_failed_with_code", async () => {
  const { wx, client } = setup();
  wx.faults.push((req) =>
    req.path === "/v1/me/decrypt"
      ? { statusCode: 400, data: { error: "invalid_base64", error_description: "bad" } }
      : undefined,
  );
  await assert.rejects(client.decrypt({ encryptedData: "x", iv: "y" }), {
    code: "request_failed",
    statusCode: 400,
    error: "invalid_base64",
    relogin: false,
  });
});

test("decrypt_without_encrypted_data_rejects_user_denied", async () => {
  const { client } = setup();
  await assert.rejects(client.decrypt({ errMsg: "getUserProfile:fail auth deny" }), { code: "user_denied" });
});

test("createClient_relative_base_url_throws", () => {
  assert.throws(() => createClient({ baseUrl: "/api", wx: new WxStub(new FakeIssuer()) }), TypeError);
});

test("createClient_no_wx_anywhere_throws", () => {
  assert.throws(() => createClient({ baseUrl: BASE }), /no global `wx`/);
});

// --- nothing is logged --------------------------------------------------------------------

const methods = ["log", "info", "warn", "error", "debug"] as const;
let saved: Array<(...args: unknown[]) => void> = [];
let consoleCalls: unknown[][] = [];

beforeEach(() => {
  saved = methods.map((m) => console[m]);
  consoleCalls = [];
  for (const m of methods) {
    console[m] = (...args: unknown[]) => {
      consoleCalls.push(args);
    };
  }
});

afterEach(() => {
  methods.forEach((m, i) => {
    console[m] = saved[i];
  });
});

test("client_full_scenario_logs_nothing_errors_carry_no_secrets", async () => {
  const { issuer, wx, client } = setup({ retry: { attempts: 2 } });
  await client.login();
  issuer.expireAccessTokens();
  await client.request({ url: "/api/a" });
  issuer.revokeAll();
  await client.request({ url: "/api/b" });
  const errors: WeauthError[] = [];
  issuer.expireAccessTokens();
  wx.faults.push((req) => (req.path === "/v1/token/refresh" ? { fail: "request:fail" } : undefined));
  await client.request({ url: "/api/c" }).catch((e: WeauthError) => errors.push(e));
  wx.faults.length = 0;
  wx.faults.push((req) => (req.path === "/v1/login" ? { statusCode: 400, data: { error: "invalid_grant" } } : undefined));
  await client.login().catch((e: WeauthError) => errors.push(e));
  await client.logout();
  assert.equal(consoleCalls.length, 0, "the client must not log");
  assert.equal(errors.length, 2);
  // Every token minted, not the ones the issuer still accepts: expireAccessTokens() and
  // revokeAll() above forgot the first login's and the first refresh's.
  const secrets = [...issuer.minted];
  for (const req of wx.requests) {
    const d = req.data as Record<string, unknown> | undefined;
    if (typeof d?.code === "string") {
      secrets.push(d.code);
    }
  }
  assert.ok(secrets.length > 5);
  for (const e of errors) {
    for (const s of secrets) {
      assert.ok(!e.message.includes(s) && !String(e.stack).includes(s), `error text holds a secret`);
    }
  }
});

test("plugin_login_uses_wx_pluginLogin_and_posts_the_plugin_appid", async () => {
  const { issuer, wx, client } = setup({ plugin: true, appid: "wxplugin" });
  const res = await client.request({ url: "/api/hello" });
  assert.equal(res.statusCode, 200);
  assert.equal(wx.pluginLogins, 1);
  assert.equal(wx.wxLogins, 0, "wx.login is not a plugin's");
  assert.equal(issuer.logins, 1);
  const login = wx.requests.find((r) => r.path === "/v1/login");
  assert.equal((login!.data as Record<string, unknown>).appid, "wxplugin");
});

test("plugin_login_that_never_answers_rejects_after_10_s_and_frees_the_flight", { timeout: 5000 }, async () => {
  const { wx, client } = setup({ plugin: true, appid: "wxplugin" });
  const answering = wx.pluginLogin.bind(wx);
  let silent = true;
  wx.pluginLogin = (option) => {
    if (silent) {
      wx.pluginLogins++; // a callback that never fires
      return;
    }
    answering(option);
  };
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    let outcome: string | undefined;
    const launch = client.login().then(
      () => (outcome = "ok"),
      (e: unknown) => (outcome = `${(e as WeauthError).code}: ${(e as WeauthError).message}`),
    );
    while (wx.pluginLogins === 0) {
      await tick();
    }
    mock.timers.tick(9999);
    await tick();
    assert.equal(outcome, undefined, "wx.login's bound: 10 s");
    mock.timers.tick(1);
    await launch;
    assert.match(outcome!, /^wx_login_failed: pluginLogin:fail timeout/);
  } finally {
    mock.timers.reset();
  }
  // The shared flight is free again: the next login starts one of its own.
  silent = false;
  await client.login();
  assert.equal(client.isLoggedIn(), true);
  assert.equal(wx.pluginLogins, 2);
});

test("plugin_without_appid_refused_at_creation", () => {
  assert.throws(() => setup({ plugin: true }), /needs `appid`/);
});
