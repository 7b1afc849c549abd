/**
 * @file Unit tests of the pure rules in `src/protocol.ts`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DEFAULT_REFRESH_REUSE_GRACE_MS,
  DEFAULT_RETRY,
  LOGIN_REFUSAL_HOLD_MS,
  backoffDelay,
  BAN_RECHECK_MS,
  banHoldUntil,
  banOf,
  classify,
  headerValue,
  holdOver,
  isTransient,
  issuerError,
  loginRefusalOf,
  normalizeBaseUrl,
  originOf,
  parseStored,
  parseTokenResponse,
  REFRESH_REUSE_MARGIN_MS,
  refreshOutcomeUnsettled,
  refreshPastGrace,
  refreshPresentableUntil,
  refreshTokenRefused,
  resolveUrl,
  retryAfterMs,
  retryPolicyOf,
} from "../../src/protocol.js";

const bearerChallenge = { "WWW-Authenticate": 'Bearer error="invalid_token"' };

test("classify_401_invalid_token_body_refresh", () => {
  assert.equal(classify(401, { error: "invalid_token" }, {}), "refresh");
});

test("classify_401_bearer_challenge_without_json_refresh", () => {
  assert.equal(classify(401, "unauthorized", bearerChallenge), "refresh");
  assert.equal(classify(401, "", { "www-authenticate": "Bearer" }), "refresh");
});

test("classify_401_other_scheme_done", () => {
  assert.equal(classify(401, { error: "nope" }, { "www-authenticate": "Basic realm=x" }), "done");
});

test("classify_relogin_true_error_status_relogin", () => {
  assert.equal(classify(400, { error: "session_key_mismatch", relogin: true }, {}), "relogin");
  assert.equal(classify(400, JSON.stringify({ error: "x", relogin: true }), {}), "relogin");
  assert.equal(classify(500, { error: "x", relogin: true }, {}), "relogin");
});

test("classify_relogin_true_2xx_3xx_done", () => {
  // A served request whose body (the app's own data) happens to hold `"relogin": true`.
  assert.equal(classify(200, { relogin: true }, {}), "done");
  assert.equal(classify(204, '{"relogin":true}', {}), "done");
  assert.equal(classify(304, { relogin: true }, {}), "done");
});

test("classify_relogin_not_exactly_true_done", () => {
  assert.equal(classify(400, { error: "invalid_base64", relogin: "true" }, {}), "done");
});

test("classify_200_403_500_done", () => {
  assert.equal(classify(200, { ok: true }, {}), "done");
  assert.equal(classify(403, { error: "insufficient_scope" }, bearerChallenge), "done");
  assert.equal(classify(500, "oops", {}), "done");
});

test("banOf_403_user_banned_with_or_without_until_else_undefined", () => {
  assert.deepEqual(banOf(403, { error: "user_banned", until: 1700000000 }), { until: 1700000000000 });
  assert.deepEqual(banOf(403, '{"error":"user_banned","until":5}'), { until: 5000 });
  assert.deepEqual(banOf(403, { error: "user_banned" }), {});
  assert.deepEqual(banOf(403, { error: "user_banned", until: "soon" }), {});
  assert.equal(banOf(403, { error: "access_denied", until: 5 }), undefined);
  assert.equal(banOf(400, { error: "user_banned", until: 5 }), undefined);
  assert.equal(banOf(403, "<html>"), undefined);
});

test("banHoldUntil_by_the_issuers_clock_capped_at_the_recheck", () => {
  const device = 1_000_000;
  // The issuer's clock a day ahead of the device's: the hold is the ban's time left, not a day more.
  const serverDate = new Date(device + 86_400_000).toUTCString();
  const serverNow = Date.parse(serverDate);
  assert.equal(banHoldUntil({ until: serverNow + 60_000 }, serverDate, device), device + 60_000);
  // Capped: a long ban is asked about again after BAN_RECHECK_MS; so is one without an end.
  assert.equal(banHoldUntil({ until: serverNow + 86_400_000 }, serverDate, device), device + BAN_RECHECK_MS);
  assert.equal(banHoldUntil({}, serverDate, device), device + BAN_RECHECK_MS);
  // No (or no readable) Date: the device's clock; an end already past holds nothing.
  assert.equal(banHoldUntil({ until: device + 5_000 }, undefined, device), device + 5_000);
  assert.equal(banHoldUntil({ until: device + 5_000 }, "soon", device), device + 5_000);
  assert.equal(banHoldUntil({ until: device - 5_000 }, undefined, device), device);
});

test("issuerError_text_json_array_null_parsed_or_empty", () => {
  assert.deepEqual(issuerError('{"error":"invalid_grant","error_description":"used"}'), {
    error: "invalid_grant",
    description: "used",
    relogin: false,
  });
  assert.deepEqual(issuerError("<html>"), { relogin: false });
  assert.deepEqual(issuerError([1]), { relogin: false });
  assert.deepEqual(issuerError(null), { relogin: false });
});

test("headerValue_any_case_found", () => {
  assert.equal(headerValue({ "Retry-After": "3" }, "retry-after"), "3");
  assert.equal(headerValue({ a: "1" }, "b"), undefined);
  assert.equal(headerValue(undefined, "b"), undefined);
});

test("parseTokenResponse_pair_or_undefined", () => {
  assert.deepEqual(parseTokenResponse({ access_token: "a", refresh_token: "r", expires_in: 9 }), {
    accessToken: "a",
    refreshToken: "r",
  });
  assert.deepEqual(parseTokenResponse('{"access_token":"a","refresh_token":"r"}'), {
    accessToken: "a",
    refreshToken: "r",
  });
  assert.equal(parseTokenResponse({ access_token: "a" }), undefined);
  assert.equal(parseTokenResponse({ access_token: "", refresh_token: "r" }), undefined);
  assert.equal(parseTokenResponse("not json"), undefined);
});

test("parseStored_wrong_shape_none", () => {
  assert.deepEqual(parseStored({ accessToken: "a", refreshToken: "r" }), {
    accessToken: "a",
    refreshToken: "r",
  });
  assert.equal(parseStored(""), undefined);
  assert.equal(parseStored({ access_token: "a", refresh_token: "r" }), undefined);
});

test("originOf_absolute_lowercased_relative_undefined", () => {
  assert.equal(originOf("HTTPS://Api.Example.com:8443/x?y"), "https://api.example.com:8443");
  assert.equal(originOf("/api/x"), undefined);
  assert.equal(originOf("ftp://x"), undefined);
});

test("normalizeBaseUrl_trailing_slashes_removed_relative_refused", () => {
  assert.equal(normalizeBaseUrl("https://a.example/"), "https://a.example");
  assert.throws(() => normalizeBaseUrl("/api"), TypeError);
  assert.throws(() => normalizeBaseUrl(""), TypeError);
});

test("resolveUrl_relative_joined_with_token", () => {
  assert.deepEqual(resolveUrl("https://a.example", "/api/x"), {
    url: "https://a.example/api/x",
    withToken: true,
  });
  assert.deepEqual(resolveUrl("https://a.example", "api/x"), {
    url: "https://a.example/api/x",
    withToken: true,
  });
});

test("resolveUrl_absolute_same_origin_with_token_other_origin_without", () => {
  assert.equal(resolveUrl("https://a.example", "https://A.example/x").withToken, true);
  assert.equal(resolveUrl("https://a.example", "https://evil.example/x").withToken, false);
  assert.equal(resolveUrl("https://a.example", "http://a.example/x").withToken, false);
  assert.equal(resolveUrl("https://a.example", "https://a.example.evil/x").withToken, false);
});

test("backoffDelay_doubles_with_jitter_and_caps", () => {
  const p = { attempts: 9, baseDelayMs: 100, maxDelayMs: 1000 };
  assert.equal(backoffDelay(1, p, 0), 50);
  assert.equal(backoffDelay(1, p, 0.999999), 100);
  assert.equal(backoffDelay(2, p, 0), 100);
  assert.equal(backoffDelay(3, p, 0.5), 300);
  assert.equal(backoffDelay(10, p, 0.999999), 1000);
  assert.equal(backoffDelay(10, p, 0), 500);
});

test("backoffDelay_defaults_total_under_ten_seconds", () => {
  let total = 0;
  for (let retry = 1; retry < DEFAULT_RETRY.attempts; retry++) {
    total += backoffDelay(retry, DEFAULT_RETRY, 0.999999);
  }
  assert.equal(total, 500 + 1000 + 2000 + 4000);
});

test("retryAfterMs_seconds_or_http_date_against_the_servers_date_not_capped", () => {
  const device = Date.UTC(2026, 11, 6, 12, 0, 0);
  assert.equal(retryAfterMs({ "retry-after": "2" }, device), 2000);
  // Not capped at the retry policy's longest delay: the caller must not retry within it.
  assert.equal(retryAfterMs({ "Retry-After": "60" }, device), 60000);
  // An HTTP-date counts from the answer's Date (the server's clock), not the device's…
  const date = "Sun, 06 Dec 2026 13:00:00 GMT";
  assert.equal(retryAfterMs({ "retry-after": "Sun, 06 Dec 2026 13:00:30 GMT", Date: date }, device), 30000);
  // …which is used when the answer has none; a date already past is 0.
  assert.equal(retryAfterMs({ "retry-after": "Sun, 06 Dec 2026 12:00:45 GMT" }, device), 45000);
  assert.equal(retryAfterMs({ "retry-after": "Wed, 21 Oct 2015 07:28:00 GMT" }, device), 0);
  assert.equal(retryAfterMs({ "retry-after": "soon" }, device), undefined);
  assert.equal(retryAfterMs({}, device), undefined);
});

test("isTransient_408_429_and_5xx_only", () => {
  assert.equal(isTransient(503), true);
  assert.equal(isTransient(502), true);
  assert.equal(isTransient(429), true);
  assert.equal(isTransient(408), true);
  assert.equal(isTransient(400), false);
  assert.equal(isTransient(401), false);
  assert.equal(isTransient(403), false);
});

test("refreshTokenRefused_invalid_grant_or_relogin_only", () => {
  assert.equal(refreshTokenRefused(400, { error: "invalid_grant", error_description: "unknown" }), true);
  assert.equal(refreshTokenRefused(400, '{"error":"invalid_grant"}'), true);
  assert.equal(refreshTokenRefused(401, { error: "invalid_grant" }), true);
  assert.equal(refreshTokenRefused(400, { error: "session_key_mismatch", relogin: true }), true);
  // Nothing said about the refresh token.
  assert.equal(refreshTokenRefused(400, { error: "invalid_request" }), false);
  assert.equal(refreshTokenRefused(401, ""), false, "a 401 without invalid_grant (a proxy's)");
  assert.equal(refreshTokenRefused(403, { error: "access_denied" }), false);
  assert.equal(refreshTokenRefused(403, { error: "user_banned" }), false, "a ban is banOf's");
  assert.equal(refreshTokenRefused(404, "<html>Not Found</html>"), false);
  assert.equal(refreshTokenRefused(404, { error: "not_found" }), false);
  assert.equal(refreshTokenRefused(413, { error: "payload_too_large" }), false);
  assert.equal(refreshTokenRefused(404, { error: "invalid_grant" }), false, "not the issuer's status for it");
  assert.equal(refreshTokenRefused(200, { relogin: true }), false);
});

test("refreshPresentableUntil_the_issuers_grace_less_2s_from_the_first_unsettled_attempts_sending", () => {
  assert.equal(DEFAULT_REFRESH_REUSE_GRACE_MS, 10_000, "WEAUTH_REFRESH_REUSE_GRACE's default");
  assert.equal(REFRESH_REUSE_MARGIN_MS, 2000);
  assert.equal(refreshPresentableUntil(1_000_000, DEFAULT_REFRESH_REUSE_GRACE_MS), 1_008_000);
  // A retry after one lost answer (5 s, then at most 0.5 s of backoff) still comes within.
  assert.ok(refreshPresentableUntil(0, DEFAULT_REFRESH_REUSE_GRACE_MS) > 5000 + DEFAULT_RETRY.baseDelayMs);
  // A grace of 0 s (every second use a theft): never again.
  assert.ok(refreshPresentableUntil(1_000_000, 0) <= 1_000_000);
});

test("refreshOutcomeUnsettled_no_answer_a_5xx_but_the_issuers_503_or_a_200_without_a_pair", () => {
  const pair = { access_token: "at", refresh_token: "rt" };
  const unavailable = { error: "temporarily_unavailable", error_description: "the store is unavailable" };
  // Unsettled: the issuer may have rotated the token.
  assert.equal(refreshOutcomeUnsettled(undefined, undefined), true, "no answer");
  assert.equal(refreshOutcomeUnsettled(200, {}), true, "a 200 without a pair");
  assert.equal(refreshOutcomeUnsettled(200, "<html>"), true);
  assert.equal(refreshOutcomeUnsettled(503, "upstream connect error or disconnect/reset before headers"), true);
  assert.equal(refreshOutcomeUnsettled(503, ""), true, "a proxy's 503 without a body");
  assert.equal(refreshOutcomeUnsettled(502, "<html>Bad Gateway</html>"), true);
  assert.equal(refreshOutcomeUnsettled(504, undefined), true);
  assert.equal(refreshOutcomeUnsettled(500, { error: "server_error" }), true);
  assert.equal(refreshOutcomeUnsettled(502, unavailable), true, "only a 503 is the issuer's refusal");
  // The store unreachable: the rotation may have been applied without being confirmed.
  const unconfirmed = { ...unavailable, write_unconfirmed: true };
  assert.equal(refreshOutcomeUnsettled(503, unconfirmed), true, "a write that may have been applied");
  assert.equal(refreshOutcomeUnsettled(503, JSON.stringify(unconfirmed)), true, "as text");
  // Settled: nothing was rotated.
  assert.equal(refreshOutcomeUnsettled(503, unavailable), false, "the issuer's (or the filter's) own 503");
  assert.equal(refreshOutcomeUnsettled(503, JSON.stringify(unavailable)), false, "as text");
  assert.equal(refreshOutcomeUnsettled(200, pair), false);
  assert.equal(refreshOutcomeUnsettled(429, { error: "rate_limited" }), false);
  assert.equal(refreshOutcomeUnsettled(408, { error: "request_timeout" }), false);
  assert.equal(refreshOutcomeUnsettled(400, { error: "invalid_grant" }), false);
  assert.equal(refreshOutcomeUnsettled(404, "not found"), false);
});

test("retryPolicyOf_undefined_members_take_the_defaults_bad_ones_throw", () => {
  assert.deepEqual(retryPolicyOf(undefined), DEFAULT_RETRY);
  assert.deepEqual(retryPolicyOf({ attempts: undefined, maxDelayMs: undefined }), DEFAULT_RETRY);
  assert.deepEqual(retryPolicyOf({ attempts: 2, baseDelayMs: 0 }), { ...DEFAULT_RETRY, attempts: 2, baseDelayMs: 0 });
  for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY, null, "8000"]) {
    assert.throws(() => retryPolicyOf({ maxDelayMs: bad as unknown as number }), /retry\.maxDelayMs/);
  }
});

test("loginRefusalOf_403_user_risky_or_access_denied_only", () => {
  assert.equal(loginRefusalOf(403, { error: "user_risky" }), "user_risky");
  assert.equal(loginRefusalOf(403, '{"error":"access_denied"}'), "access_denied");
  assert.equal(loginRefusalOf(403, { error: "user_banned" }), undefined);
  assert.equal(loginRefusalOf(400, { error: "access_denied" }), undefined);
  assert.equal(loginRefusalOf(403, "forbidden"), undefined);
  assert.equal(LOGIN_REFUSAL_HOLD_MS, 60_000);
});

test("holdOver_at_its_end_or_with_more_left_than_its_cap", () => {
  const cap = 60_000;
  assert.equal(holdOver(1_000_000, cap, 1_000_000 - 1), false);
  assert.equal(holdOver(1_000_000, cap, 1_000_000), true);
  assert.equal(holdOver(1_000_000, cap, 1_000_000 - cap), false);
  // Only a clock set back leaves more than the cap.
  assert.equal(holdOver(1_000_000, cap, 1_000_000 - cap - 1), true);
});

test("refreshPastGrace_from_the_grace_less_the_margin_or_before_the_sending", () => {
  const sent = 1_000_000;
  const until = refreshPresentableUntil(sent, DEFAULT_REFRESH_REUSE_GRACE_MS);
  assert.equal(refreshPastGrace(sent, DEFAULT_REFRESH_REUSE_GRACE_MS, sent), false);
  assert.equal(refreshPastGrace(sent, DEFAULT_REFRESH_REUSE_GRACE_MS, until - 1), false);
  assert.equal(refreshPastGrace(sent, DEFAULT_REFRESH_REUSE_GRACE_MS, until), true);
  // A device clock set back since the sending.
  assert.equal(refreshPastGrace(sent, DEFAULT_REFRESH_REUSE_GRACE_MS, sent - 1), true);
});
