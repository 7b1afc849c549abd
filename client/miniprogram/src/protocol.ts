/**
 * @file The pure rules of the client: what an answer means (refresh, re-login or done),
 * where a URL points and whether it may carry the token, how long to back off. No `wx`, no
 * clock, no randomness of its own: everything it needs is an argument, so each rule has a
 * unit test (`test/unit/protocol.test.ts`).
 */

/** The tokens the client keeps (what `wx.setStorageSync` stores under the storage key). */
export interface TokenPair {
  /** The JWT sent as `Authorization: Bearer …`. */
  accessToken: string;
  /** Opaque and single use: each refresh consumes it and returns a new pair. */
  refreshToken: string;
}

/** What the client does with an answer. */
export type Verdict =
  /** Give it to the caller. */
  | "done"
  /** 401 `invalid_token`: the access token is expired or revoked → one shared refresh. */
  | "refresh"
  /** `"relogin": true` (the session_key changed) → one shared `wx.login`. */
  | "relogin";

/** The members of the issuer's error body (`{"error","error_description","relogin"?}`). */
export interface IssuerError {
  error?: string;
  description?: string;
  relogin: boolean;
}

/** The issuer's error members of `data` (wx.request gives JSON already parsed, or text). */
/**
 * Whether an issuer's 503 says its store was unreachable rather than busy, so that the write
 * the request made may have been applied (`"write_unconfirmed": true`, docs/API.md): a
 * refresh's rotation whose replication could not be confirmed.
 */
function writeUnconfirmed(data: unknown): boolean {
  let body: unknown = data;
  if (typeof body === "string") {
    try {
      body = JSON.parse(body);
    } catch {
      return false;
    }
  }
  return (
    body !== null &&
    typeof body === "object" &&
    (body as Record<string, unknown>).write_unconfirmed === true
  );
}

export function issuerError(data: unknown): IssuerError {
  let body: unknown = data;
  if (typeof body === "string") {
    try {
      body = JSON.parse(body);
    } catch {
      return { relogin: false };
    }
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    return { relogin: false };
  }
  const record = body as Record<string, unknown>;
  return {
    error: typeof record.error === "string" ? record.error : undefined,
    description:
      typeof record.error_description === "string" ? record.error_description : undefined,
    relogin: record.relogin === true,
  };
}

/** A header's value, whatever the case of its name (wx.request keeps the server's case). */
export function headerValue(header: unknown, name: string): string | undefined {
  if (header === null || typeof header !== "object") {
    return undefined;
  }
  const wanted = name.toLowerCase();
  for (const [key, value] of Object.entries(header as Record<string, unknown>)) {
    if (key.toLowerCase() === wanted) {
      return Array.isArray(value) ? value.join(", ") : String(value);
    }
  }
  return undefined;
}

/**
 * What to do with an answer to a request that carried our access token.
 *
 * - 401 whose body says `invalid_token`, or whose `WWW-Authenticate` is a Bearer challenge
 *   (the issuer and the weauth filter send both) → `refresh`;
 * - an error answer (4xx, 5xx) with `"relogin": true` → `relogin`;
 * - everything else (including a 401 from some other scheme, 403 `insufficient_scope`,
 *   which a new token would not fix, and a 2xx whatever its body holds: the request was
 *   served, and an app's own `relogin` member is none of ours) → `done`.
 */
export function classify(statusCode: number, data: unknown, header: unknown): Verdict {
  const err = issuerError(data);
  if (err.relogin && statusCode >= 400) {
    return "relogin";
  }
  if (statusCode === 401) {
    const challenge = headerValue(header, "www-authenticate") ?? "";
    if (err.error === "invalid_token" || /^\s*bearer\b/i.test(challenge)) {
      return "refresh";
    }
  }
  return "done";
}

/**
 * The ban a login's answer tells of: 403 `user_banned`, with `until` (unix seconds) when the
 * ban ends — returned in milliseconds — or without it (until lifted). Anything else:
 * `undefined`.
 */
export function banOf(statusCode: number, data: unknown): { until?: number } | undefined {
  if (statusCode !== 403 || issuerError(data).error !== "user_banned") {
    return undefined;
  }
  let body: unknown = data;
  if (typeof body === "string") {
    try {
      body = JSON.parse(body);
    } catch {
      return {};
    }
  }
  const until = (body as Record<string, unknown>).until;
  return typeof until === "number" && Number.isFinite(until) ? { until: until * 1000 } : {};
}

/**
 * How long the client holds the logins it would start itself after a ban: until the ban's end
 * as the issuer counts time (its answer's `Date`; the device's clock when there is none), and
 * at most {@link BAN_RECHECK_MS} — a ban lifted early, or without an end, is asked about again
 * then. Returns the device time (ms) the hold ends at.
 */
export function banHoldUntil(
  ban: { until?: number },
  serverDate: string | undefined,
  deviceNow: number,
): number {
  const serverNow = serverNowOf(serverDate, deviceNow);
  const left = ban.until === undefined ? BAN_RECHECK_MS : Math.min(ban.until - serverNow, BAN_RECHECK_MS);
  return deviceNow + Math.max(0, left);
}

/** The longest the client holds its logins after a ban before asking the issuer again. */
export const BAN_RECHECK_MS = 10 * 60 * 1000;

/**
 * How long the client holds the logins it would start itself after the issuer refused one
 * about the user ({@link loginRefusalOf}): 60 s. Asking again at once would spend a `wx.login`
 * code, a WeChat code exchange (and, for `user_risky`, a `getuserriskrank` call, counted per
 * app and day) on an answer known in advance, for every request the app makes meanwhile. The
 * hold is far shorter than a ban's ({@link BAN_RECHECK_MS}) because such a refusal has no end
 * the issuer can state: WeChat's verdict on the user may change once they have verified
 * themselves, and a user who did should not wait minutes; a minute also matches the issuer's
 * own hold of WeChat's rate limit.
 */
export const LOGIN_REFUSAL_HOLD_MS = 60 * 1000;

/**
 * The error of a login refusal that is about the user, not the attempt, so that the client
 * holds its own logins after it for {@link LOGIN_REFUSAL_HOLD_MS}: 403 `user_risky` (WeChat's
 * risk control ranked the user above the app's `max_rank`) and 403 `access_denied` (WeChat
 * flagged the user as high-risk, errcode 40226, or refused the account: docs/API.md). Another
 * code would meet the same answer. Anything else — a ban is {@link banOf}'s — `undefined`.
 */
export function loginRefusalOf(
  statusCode: number,
  data: unknown,
): "user_risky" | "access_denied" | undefined {
  if (statusCode !== 403) {
    return undefined;
  }
  const error = issuerError(data).error;
  return error === "user_risky" || error === "access_denied" ? error : undefined;
}

/**
 * Whether a hold the client set to end at device time `until`, for at most `capMs`, is over at
 * device time `deviceNow`: its end has come, or more than `capMs` is left — which only a
 * device clock set back since the hold began can make, and which must not stretch the hold past
 * the cap it was set with (a clock set back an hour would otherwise hold a 60 s `Retry-After`
 * for an hour and a minute). Such a hold is taken for over: the issuer is asked again, and
 * answers again if its reason still stands.
 */
export function holdOver(until: number, capMs: number, deviceNow: number): boolean {
  return deviceNow >= until || until - deviceNow > capMs;
}

/**
 * The server's time of an answer (ms), from its `Date` header, else the device's: waits the
 * issuer states as a time are counted against its clock, whatever the device's says.
 */
function serverNowOf(serverDate: string | undefined, deviceNow: number): number {
  const server = serverDate === undefined ? Number.NaN : Date.parse(serverDate);
  return Number.isFinite(server) ? server : deviceNow;
}

/** The token pair of a 200 answer to `/v1/login` or `/v1/token/refresh`, if well formed. */
export function parseTokenResponse(data: unknown): TokenPair | undefined {
  let body: unknown = data;
  if (typeof body === "string") {
    try {
      body = JSON.parse(body);
    } catch {
      return undefined;
    }
  }
  if (body === null || typeof body !== "object") {
    return undefined;
  }
  const record = body as Record<string, unknown>;
  const access = record.access_token;
  const refresh = record.refresh_token;
  if (typeof access !== "string" || access === "" || typeof refresh !== "string" || refresh === "") {
    return undefined;
  }
  return { accessToken: access, refreshToken: refresh };
}

/** Tokens read back from storage (anything else, e.g. an older format, counts as none). */
export function parseStored(value: unknown): TokenPair | undefined {
  if (value === null || typeof value !== "object") {
    return undefined;
  }
  const record = value as Record<string, unknown>;
  if (
    typeof record.accessToken !== "string" ||
    record.accessToken === "" ||
    typeof record.refreshToken !== "string" ||
    record.refreshToken === ""
  ) {
    return undefined;
  }
  return { accessToken: record.accessToken, refreshToken: record.refreshToken };
}

/** `scheme://host[:port]` of an absolute http(s) URL, lower-cased; undefined otherwise. */
export function originOf(url: string): string | undefined {
  const m = /^(https?:\/\/[^/?#]+)/i.exec(url);
  return m ? m[1].toLowerCase() : undefined;
}

/** `baseUrl` without trailing slashes. Throws when it is not an absolute http(s) URL. */
export function normalizeBaseUrl(baseUrl: string): string {
  if (typeof baseUrl !== "string" || originOf(baseUrl) === undefined) {
    throw new TypeError("weauth: baseUrl must be an absolute http(s) URL");
  }
  return baseUrl.replace(/\/+$/, "");
}

/**
 * Where a request goes and whether it may carry our token: a relative `url` is joined to
 * `baseUrl`; an absolute one is used as is and gets the token only when it has the same
 * origin as `baseUrl` (the token is never sent to another host).
 */
export function resolveUrl(baseUrl: string, url: string): { url: string; withToken: boolean } {
  const origin = originOf(url);
  if (origin !== undefined) {
    return { url, withToken: origin === originOf(baseUrl) };
  }
  const path = url.startsWith("/") ? url : `/${url}`;
  return { url: `${baseUrl}${path}`, withToken: true };
}

/** How a refresh or a login that fails on the network (or with 408, 429 or 5xx) is retried. */
export interface RetryPolicy {
  /** Attempts in all, first one included (default 5). */
  attempts: number;
  /** Delay before the first retry, in ms (default 500); doubles each time. */
  baseDelayMs: number;
  /**
   * Longest delay, in ms (default 8000); also the longest `Retry-After` waited before a retry
   * (a longer one ends the retries: see {@link retryAfterMs}).
   */
  maxDelayMs: number;
}

/**
 * The defaults of {@link RetryPolicy}: at most 7.5 s of backoff in all between the 5 attempts
 * (a refresh waits up to 5 s for each answer besides: about 32.5 s in the worst case; when
 * answers are lost, the refresh token's reuse grace ends it sooner,
 * {@link refreshPresentableUntil}).
 */
export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, baseDelayMs: 500, maxDelayMs: 8000 };

/**
 * The retry policy of `createClient`'s `retry` option: {@link DEFAULT_RETRY} with the members
 * given. A member left out or `undefined` takes the default — spread over the defaults as it
 * is, an explicit `undefined` would replace it, making `attempts` undefined (no attempt is then
 * the last: a login or refresh retried forever) or `maxDelayMs` undefined (a `NaN` backoff,
 * and any `Retry-After`, an hour's too, waited). Throws a `TypeError` for a member that is not
 * a finite number, 0 or more (`attempts` 0 makes one attempt, as 1 does).
 */
export function retryPolicyOf(given: Partial<RetryPolicy> | undefined): RetryPolicy {
  const policy: RetryPolicy = { ...DEFAULT_RETRY };
  for (const key of ["attempts", "baseDelayMs", "maxDelayMs"] as const) {
    const value: unknown = given?.[key];
    if (value === undefined) {
      continue;
    }
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
      throw new TypeError(
        `weauth: \`retry.${key}\` must be a finite number, 0 or more (left out: ${DEFAULT_RETRY[key]})`,
      );
    }
    policy[key] = value;
  }
  return policy;
}

/**
 * The delay before retry number `retry` (1 = the first retry): exponential, capped, with
 * "equal jitter" (between half and all of it) so many devices that lost the network at once
 * do not come back in step. `random` is in [0, 1).
 */
export function backoffDelay(retry: number, policy: RetryPolicy, random: number): number {
  const exp = policy.baseDelayMs * 2 ** Math.max(0, retry - 1);
  const capped = Math.min(policy.maxDelayMs, exp);
  return Math.round(capped / 2 + (capped / 2) * Math.min(Math.max(random, 0), 1));
}

/**
 * `Retry-After` as ms from now, in either form: delay-seconds, or an HTTP-date counted from the
 * answer's `Date` (the server's clock, as {@link banHoldUntil} does; the device's, `deviceNow`,
 * when there is none) — a date already past is 0. Undefined when absent or unreadable. Not
 * capped: a wait longer than the client would make is the server's window all the same, and
 * the client does not retry within it (it gives up and holds, {@link RETRY_AFTER_MAX_HOLD_MS}).
 */
export function retryAfterMs(header: unknown, deviceNow: number): number | undefined {
  const value = headerValue(header, "retry-after");
  if (value === undefined) {
    return undefined;
  }
  if (/^\s*\d+\s*$/.test(value)) {
    return Number(value) * 1000;
  }
  const at = Date.parse(value);
  if (!Number.isFinite(at)) {
    return undefined;
  }
  return Math.max(0, at - serverNowOf(headerValue(header, "date"), deviceNow));
}

/**
 * The longest the client holds its logins (or refreshes) after the issuer answered one with a
 * `Retry-After` it would not wait for in a retry: one longer than that (a proxy's, say) is
 * asked about again then, as a ban is after {@link BAN_RECHECK_MS}.
 */
export const RETRY_AFTER_MAX_HOLD_MS = BAN_RECHECK_MS;

/**
 * True for answers to a refresh or a login that are worth retrying: 5xx, 429, and 408 (the
 * request was cut off before the issuer read it, e.g. a body too slow on a weak network: the
 * refresh token is unspent).
 */
export function isTransient(statusCode: number): boolean {
  return statusCode >= 500 || statusCode === 429 || statusCode === 408;
}

/**
 * True when a refused refresh says the refresh token is no good, so only a new login helps:
 * 400 `invalid_grant` (unknown, used, expired, or its session revoked: docs/API.md; 401 with
 * it too, as some OAuth servers answer), or an error answer with `"relogin": true`. Anything
 * else — 400 `invalid_request`, a 403 that is not about the token, a proxy's 404 or 413, a 401
 * without `invalid_grant` — says nothing about the refresh token, which may well be live: the
 * client keeps it and spends no `wx.login` code. (A ban, 403 `user_banned`, is {@link banOf}'s.)
 */
export function refreshTokenRefused(statusCode: number, data: unknown): boolean {
  const err = issuerError(data);
  if (err.relogin && statusCode >= 400) {
    return true;
  }
  return err.error === "invalid_grant" && (statusCode === 400 || statusCode === 401);
}

/**
 * The issuer's refresh-token reuse grace by default (`WEAUTH_REFRESH_REUSE_GRACE`, 10 s): a
 * refresh token presented again within it of its rotation gets the refresh token it was
 * rotated to; presented later, it is taken for a theft (RFC 9700 §4.14.2) and the session is
 * revoked (`weauth_refreshes_total{outcome="reuse"}`).
 */
export const DEFAULT_REFRESH_REUSE_GRACE_MS = 10_000;

/**
 * How much sooner than the issuer's grace the client stops presenting a refresh token that may
 * have been rotated unseen: the grace runs at the issuer from its arrival there, the client's
 * count from the token's sending, and a retry may take longer to arrive than the first
 * presentation did (a weak uplink). The issuer counts whole seconds, which only lengthens it.
 */
export const REFRESH_REUSE_MARGIN_MS = 2000;

/**
 * Until when (device time, ms; not included) a refresh token may be presented again once an
 * attempt left it unsettled ({@link refreshOutcomeUnsettled}: the issuer may have rotated it
 * unseen), `unsettledSentAt` being the sending time of the first such attempt: `graceMs`, the
 * issuer's reuse grace, less {@link REFRESH_REUSE_MARGIN_MS}, from that sending — a rotation
 * by that attempt (or a later one) came no sooner, so the grace at the issuer ends no sooner.
 * An earlier attempt answered with a settled refusal (a 429, the issuer's 503) rotated nothing
 * and does not count. With a grace of at most the margin (`0s`, every second use a theft),
 * never: the result is not after `unsettledSentAt`.
 */
export function refreshPresentableUntil(unsettledSentAt: number, graceMs: number): number {
  return unsettledSentAt + graceMs - REFRESH_REUSE_MARGIN_MS;
}

/**
 * Whether a refresh token left unsettled by an attempt sent at device time `unsettledSentAt`
 * may no longer be presented at device time `at`: at or after {@link refreshPresentableUntil},
 * or before `unsettledSentAt` — a device clock set back since that sending, which leaves the
 * time the issuer's grace has run unknown. Taken for past the grace then, so the client logs in
 * instead of presenting a token the issuer may judge a reuse, which revokes the session.
 */
export function refreshPastGrace(unsettledSentAt: number, graceMs: number, at: number): boolean {
  return at < unsettledSentAt || at >= refreshPresentableUntil(unsettledSentAt, graceMs);
}

/**
 * Whether a refresh attempt answered `statusCode` (`undefined`: no answer came) with `data`
 * leaves its refresh token unsettled — the issuer may have rotated it without the client
 * getting the successor, so the token may be presented again only within the reuse grace
 * ({@link refreshPresentableUntil}):
 *
 * - no answer (a timeout, a reset, no network): the request may have reached the issuer and
 *   its answer been lost. Whatever `wx.request`'s fail callback says: its `errMsg` is only
 *   carried into the error's message (`wx.ts`'s `send`), and WeChat documents no `errMsg`
 *   that tells, on every platform, a request that never left the device from one whose answer
 *   was lost; so no failure is taken for "nothing sent";
 * - a 200 without a token pair: the issuer answered, so it most likely rotated the token;
 * - a 5xx other than the one below: a proxy's 502, 503 or 504 page may come after the issuer
 *   answered, and a 500 `server_error` is the issuer failing at any step, the rotation's
 *   included.
 *
 * Settled — the token not taken, no window started: every 4xx (408, 429 and the refusals
 * {@link refreshTokenRefused} reads), a 200 with a pair, and a 503 whose JSON body's `error`
 * is `temporarily_unavailable` (docs/API.md's error body). That one is the issuer's or the
 * weauth edge filter's own refusal: the filter answers it before the request reaches the
 * issuer, the issuer when its store (or WeChat) is unavailable — during an outage, every
 * attempt; counting those would drop the tokens and send the user to a `wx.login` (itself
 * refused then) for every refresh. Unless it carries `"write_unconfirmed": true`: the store
 * was unreachable, and may have taken the rotation without confirming it (a Redis write whose
 * replication `WAIT` failed, a reply lost after the write) — unsettled, then.
 */
export function refreshOutcomeUnsettled(statusCode: number | undefined, data: unknown): boolean {
  if (statusCode === undefined) {
    return true;
  }
  if (statusCode === 200) {
    return parseTokenResponse(data) === undefined;
  }
  if (statusCode === 503 && issuerError(data).error === "temporarily_unavailable") {
    return writeUnconfirmed(data);
  }
  return statusCode >= 500;
}
