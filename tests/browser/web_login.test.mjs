// The web-login browser test: Debian's Chromium, driven by playwright-core, through the real
// Envoy with the weauth filter, the real issuer and the mock WeChat's authorize page.
//
// Run by tests/tests/e2e_browser.rs, which boots the stack on free ports and passes:
//   WEAUTH_ENVOY_URL   the stack's Envoy (the demo page is at /demo/)
//   WEAUTH_ISSUER_URL  the issuer, directly (its WEAUTH_ISSUER; the OAuth callback lives there)
//   WEAUTH_MOCK_URL    the mock WeChat (its authorize pages read the mock_user cookie)
//   WEAUTH_OA_APPID, WEAUTH_MINI_SUB  the official account, and the sub the mini-program
//                      login of "alice" got (the web login of alice must give the same sub)
//   WEAUTH_CHROMIUM    the browser (default /usr/bin/chromium)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set (run through cargo test -p weauth-tests --test suites -- e2e_browser::)`);
  return value;
};
const ENVOY = env('WEAUTH_ENVOY_URL');
const ISSUER = env('WEAUTH_ISSUER_URL');
const MOCK = env('WEAUTH_MOCK_URL');
const OA = env('WEAUTH_OA_APPID');
const MINI_SUB = env('WEAUTH_MINI_SUB');
const DEMO = `${ENVOY}/demo/`;
// A step's bound on a loaded 2-core machine (Chromium shares it with the test streams):
// it only ends a hang.
const STEP_TIMEOUT = 20_000;
// A hung step fails its test instead of the whole run.
const TEST = { timeout: 60_000 };

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: env('WEAUTH_CHROMIUM', '/usr/bin/chromium'),
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    timeout: 30_000,
  });
});
after(async () => {
  await browser?.close();
});

/** A fresh browser profile whose mock WeChat "user" is `user` (and decision `action`). */
async function newContext(user, action = 'approve') {
  const context = await browser.newContext();
  context.setDefaultTimeout(STEP_TIMEOUT);
  await context.addCookies([
    { name: 'mock_user', value: user, url: MOCK },
    { name: 'mock_action', value: action, url: MOCK },
  ]);
  return context;
}

/** Clicks the demo page's login link and follows issuer → mock WeChat → callback → page. */
async function logIn(page, linkId = '#login-oa') {
  const seen = [];
  page.on('request', (r) => { if (r.isNavigationRequest()) seen.push(r.url()); });
  await page.goto(DEMO);
  // The last hop is the callback's redirect back to the page.
  const [back] = await Promise.all([
    page.waitForRequest((r) => r.url() === DEMO && r.redirectedFrom() !== null),
    page.click(linkId),
  ]);
  const response = await back.response();
  assert.equal(response?.status(), 200);
  await page.waitForLoadState('load');
  // A browser keeps the fragment of the first URL through redirects whose Location has none,
  // so the page may end in #wechat_redirect, as after a real WeChat login.
  assert.equal(page.url().split('#')[0], DEMO);
  return seen;
}

/** The page's own `fetch('/api/hello')` (page.evaluate has no timeout of its own). */
async function callApi(page) {
  return withTimeout(page.evaluate(async () => {
    const r = await fetch('/api/hello', { credentials: 'same-origin' });
    return { status: r.status, body: r.status === 200 ? await r.json() : await r.text() };
  }), 'fetch /api/hello');
}

function withTimeout(promise, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${STEP_TIMEOUT} ms`)), STEP_TIMEOUT);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

async function cookie(context, name) {
  return (await context.cookies(ENVOY)).find((c) => c.name === name);
}

test('login through the mock authorize page gives cookies that reach the upstream with identity headers', TEST, async () => {
  const context = await newContext('alice');
  const page = await context.newPage();
  const seen = await logIn(page);
  // Through the issuer, to WeChat's (the mock's) authorize page, and back via the callback.
  assert.ok(seen.some((u) => u.startsWith(`${ENVOY}/v1/web/authorize?`)), seen.join('\n'));
  assert.ok(seen.some((u) => u.startsWith(`${MOCK}/connect/oauth2/authorize?`)), seen.join('\n'));
  assert.ok(seen.some((u) => u.includes('/v1/web/callback?code=')), seen.join('\n'));
  const at = await cookie(context, 'weauth_at');
  assert.ok(at, 'weauth_at cookie set');
  assert.equal(at.httpOnly, true);
  assert.equal(at.sameSite, 'Lax');
  assert.equal(at.path, '/');
  const rt = await cookie(context, 'weauth_rt');
  assert.equal(rt, undefined, 'weauth_rt is scoped to /v1/token/refresh');
  const rtAll = (await context.cookies(`${ENVOY}/v1/token/refresh`)).find((c) => c.name === 'weauth_rt');
  assert.ok(rtAll, 'weauth_rt cookie set');
  assert.equal(rtAll.sameSite, 'Strict');
  assert.equal(rtAll.httpOnly, true);
  // The page cannot read the HttpOnly cookies.
  assert.equal(await page.evaluate(() => document.cookie.includes('weauth_at')), false);

  const api = await callApi(page);
  assert.equal(api.status, 200, JSON.stringify(api));
  const headers = api.body.headers;
  assert.equal(headers['x-weauth-appid'], OA);
  assert.ok(headers['x-weauth-sub'], JSON.stringify(headers));
  assert.ok(headers['x-weauth-openid'], JSON.stringify(headers));
  // One person, one sub: the mini-program login of alice (same unionid) got this sub.
  assert.equal(headers['x-weauth-sub'], MINI_SUB);

  // Refresh through the cookie rotates both cookies.
  const status = await withTimeout(page.evaluate(() => window.weauthDemo.refresh()), 'refresh');
  assert.equal(status, 204);
  const at2 = await cookie(context, 'weauth_at');
  assert.notEqual(at2.value, at.value, 'a new access token');
  const rt2 = (await context.cookies(`${ENVOY}/v1/token/refresh`)).find((c) => c.name === 'weauth_rt');
  assert.notEqual(rt2.value, rtAll.value, 'a new refresh token');
  assert.equal((await callApi(page)).status, 200);

  // Logout clears the cookies and revokes the session: the next fetch is 401, and the old
  // token, replayed as a bearer, is refused at the edge too.
  assert.equal(await withTimeout(page.evaluate(() => window.weauthDemo.logout()), 'logout'), 204);
  const loggedOut = Date.now();
  assert.equal(await cookie(context, 'weauth_at'), undefined);
  assert.equal((await callApi(page)).status, 401);
  // Within 5 s of the logout's answer (a loaded CI machine's bound, far below the feed poll's
  // 20 s hold); the measured delay is printed.
  let replay;
  let took;
  for (;;) {
    replay = await fetch(`${ENVOY}/api/hello`, { headers: { authorization: `Bearer ${at2.value}` } });
    took = Date.now() - loggedOut;
    if (replay.status === 401 || took > 5000) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(replay.status, 401, `the logged-out token is revoked at the edge (still ${replay.status} after ${took} ms)`);
  console.log(`the logged-out token was refused at the edge ${took} ms after the logout's answer`);
  await context.close();
});

test('logout after the access cookie lapsed clears the refresh cookie through the edge', TEST, async () => {
  // The access cookie lapses with its token (its Max-Age) while the refresh cookie stays: a
  // logout must still reach the issuer, which clears it — else whoever uses this browser
  // next gets the session back through the refresh route. The edge answered 401 itself (a
  // token required under /v1/) and nothing was cleared.
  const context = await newContext('lapsed');
  const page = await context.newPage();
  await logIn(page);
  await context.clearCookies({ name: 'weauth_at' });
  const refreshCookie = async () =>
    (await context.cookies(`${ENVOY}/v1/token/refresh`)).find((c) => c.name === 'weauth_rt');
  assert.ok(await refreshCookie(), 'weauth_rt set by the login');
  assert.equal(await withTimeout(page.evaluate(() => window.weauthDemo.logout()), 'logout'), 401);
  assert.equal(await refreshCookie(), undefined, 'the logout cleared the refresh cookie');
  assert.notEqual(await withTimeout(page.evaluate(() => window.weauthDemo.refresh()), 'refresh'), 204);
  assert.equal(await cookie(context, 'weauth_at'), undefined, 'no session came back');
  await context.close();
});

test('two tabs refreshing with the same cookie at once both get new cookies; the session survives', TEST, async () => {
  const context = await newContext('tabitha');
  const first = await context.newPage();
  await logIn(first);
  const second = await context.newPage();
  await second.goto(DEMO);
  // Hold both refreshes until both are in flight, so both carry the same weauth_rt cookie
  // (what two tabs waking together do); then let them through together.
  const held = [];
  let release;
  const bothSent = new Promise((resolve) => { release = resolve; });
  await context.route(`${ENVOY}/v1/token/refresh`, async (route) => {
    held.push((await route.request().allHeaders()).cookie);
    if (held.length === 2) release();
    await bothSent;
    await route.continue();
  });
  const statuses = await withTimeout(Promise.all(
    [first, second].map((page) => page.evaluate(() => window.weauthDemo.refresh())),
  ), 'two refreshes');
  await context.unroute(`${ENVOY}/v1/token/refresh`);
  assert.equal(held.length, 2);
  assert.equal(held[0], held[1], 'both tabs presented the same refresh cookie');
  // Within WEAUTH_REFRESH_REUSE_GRACE the second use is not a theft: both get a pair (the
  // same refresh cookie, each its own access cookie).
  assert.deepEqual(statuses, [204, 204]);
  for (const page of [first, second]) assert.equal((await callApi(page)).status, 200);
  // The session lives on: the cookie the browser kept refreshes again.
  assert.equal(await withTimeout(first.evaluate(() => window.weauthDemo.refresh()), 'refresh'), 204);
  assert.equal((await callApi(second)).status, 200);
  await context.close();
});

test('a replayed callback (used state) is refused with 400 and sets no cookie', TEST, async () => {
  const context = await newContext('bob');
  const page = await context.newPage();
  const seen = await logIn(page);
  const callback = seen.find((u) => u.includes('/v1/web/callback?code='));
  assert.ok(callback, seen.join('\n'));
  await context.clearCookies({ name: 'weauth_at' });
  const response = await page.goto(callback);
  assert.equal(response.status(), 400);
  assert.match(await response.text(), /state/);
  assert.equal(await cookie(context, 'weauth_at'), undefined);
  await context.close();
});

test('a forged state is refused with 400', TEST, async () => {
  const context = await newContext('carol');
  const page = await context.newPage();
  const response = await page.goto(`${ISSUER}/v1/web/callback?code=forged&state=ForgedState0123456789abcdefABCDEF`);
  assert.equal(response.status(), 400);
  assert.match(await response.text(), /state/);
  await context.close();
});

test('a state started in another browser is refused with 400', TEST, async () => {
  // The attacker starts a login with plain HTTP (no browser), lets the mock approve it, and
  // stops at the callback URL (code and state), which is then opened in the victim's browser.
  const q = new URLSearchParams({ appid: OA, redirect_uri: DEMO });
  const authorize = await fetch(`${ENVOY}/v1/web/authorize?${q}`, { redirect: 'manual' });
  assert.equal(authorize.status, 302);
  assert.match(authorize.headers.get('set-cookie') ?? '', /^weauth_oauth=/);
  const wechat = await fetch(authorize.headers.get('location'), {
    redirect: 'manual',
    headers: { cookie: 'mock_user=mallory' },
  });
  assert.equal(wechat.status, 302);
  const stolen = wechat.headers.get('location');
  assert.match(stolen, /\/v1\/web\/callback\?code=/);
  const victim = await newContext('alice');
  const page = await victim.newPage();
  const response = await page.goto(stolen);
  assert.equal(response.status(), 400);
  assert.match(await response.text(), /another browser/);
  assert.equal(await cookie(victim, 'weauth_at'), undefined);
  await victim.close();
});

test('a redirect_uri off the allow-list is refused with 400 and no redirect', TEST, async () => {
  const context = await newContext('alice');
  const page = await context.newPage();
  for (const target of ['https://evil.example/demo/', `${DEMO}x`, `${ENVOY}/demo`]) {
    const q = new URLSearchParams({ appid: OA, redirect_uri: target });
    const response = await page.goto(`${ENVOY}/v1/web/authorize?${q}`);
    assert.equal(response.status(), 400, target);
    assert.equal(response.request().redirectedFrom(), null, 'no redirect happened');
    assert.equal(page.url(), `${ENVOY}/v1/web/authorize?${q}`);
    assert.match(await response.text(), /redirect_uri/);
  }
  await context.close();
});

test('the user refusing consent gets a clear 400 page', TEST, async () => {
  const context = await newContext('dave', 'deny');
  const page = await context.newPage();
  await page.goto(DEMO);
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().includes('/v1/web/callback')),
    page.click('#login-oa'),
  ]);
  assert.equal(response.status(), 400);
  assert.match(await response.text(), /did not authorize/);
  assert.equal(await cookie(context, 'weauth_at'), undefined);
  await context.close();
});

test('a cross-site or cross-origin POST carrying the cookie is refused; the session survives', TEST, async () => {
  const context = await newContext('erin');
  const page = await context.newPage();
  await logIn(page);
  assert.equal((await callApi(page)).status, 200);

  // Two attacker pages, served by Playwright itself: one on another site (SameSite=Lax keeps
  // the cookie off its POST: the edge answers 401), one on the same site but another origin
  // (another port of 127.0.0.1: the cookie is sent with `Sec-Fetch-Site: same-site`; the
  // edge's CSRF rule answers 403, and the issuer's Origin check would behind it).
  const envoyPort = new URL(ENVOY).port;
  const attackers = [
    ['http://attacker.invalid/', [401]],
    [`http://127.0.0.1:${Number(envoyPort) === 1 ? 2 : 1}/attack`, [403]],
  ];
  // Each attacker page auto-submits a form POST to the logout route (a top-level
  // navigation, the classic CSRF; a fetch from a public origin to 127.0.0.1 would be stopped
  // earlier by Chromium's Private Network Access).
  for (const [origin, statuses] of attackers) {
    const attack = await context.newPage();
    await attack.route(origin, (route) => route.fulfill({
      contentType: 'text/html',
      body: `<form id="f" method="POST" action="${ENVOY}/v1/logout"></form>`,
    }));
    await attack.goto(origin);
    const [response] = await Promise.all([
      attack.waitForResponse((r) => r.url() === `${ENVOY}/v1/logout`),
      withTimeout(attack.evaluate(() => document.getElementById('f').submit()), `attack from ${origin}`),
    ]);
    assert.ok(statuses.includes(response.status()), `${origin}: ${response.status()}`);
  }
  // Still logged in: the browser's cookie still opens the API. (Checked with the context's
  // own HTTP client, which sends the browser's cookies: after those error-page navigations
  // Chromium sometimes stalls new work in the same context, which is not what is tested.)
  const still = await context.request.get(`${ENVOY}/api/hello`, { timeout: STEP_TIMEOUT });
  assert.equal(still.status(), 200, await still.text());
  await withTimeout(context.close(), 'closing the context').catch(() => {});
});
