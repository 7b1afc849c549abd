/**
 * @file `createClient`: the glue that keeps the tokens and drives `wx.login` / `wx.request`
 * by the rules of `protocol.ts`, with one shared refresh-or-login in flight at a time
 * (`flight.ts`) per storage key — shared also with the other clients on that key in the JS
 * context, copies of this package included, as is the logout epoch that stops what a
 * `logout()` by any of them overtook.
 *
 * Why single flight matters: refresh tokens are single use and the issuer treats a second
 * use as theft (RFC 9700 §4.14), revoking the whole session. When twenty requests see the
 * same expired access token at once, exactly one may refresh; the other nineteen wait for it
 * and retry with its result. A request that comes back with an access token that has already
 * been replaced does not refresh at all: it retries with the current one.
 *
 * Nothing here logs anything, so no token, code or session_key can end up in a log.
 */
import { WeauthError } from "./errors.js";
import { sharedFlight } from "./flight.js";
import {
  BAN_RECHECK_MS,
  DEFAULT_REFRESH_REUSE_GRACE_MS,
  LOGIN_REFUSAL_HOLD_MS,
  RETRY_AFTER_MAX_HOLD_MS,
  RetryPolicy,
  TokenPair,
  backoffDelay,
  banHoldUntil,
  banOf,
  classify,
  headerValue,
  holdOver,
  isTransient,
  issuerError,
  loginRefusalOf,
  normalizeBaseUrl,
  parseStored,
  parseTokenResponse,
  refreshOutcomeUnsettled,
  refreshPastGrace,
  refreshTokenRefused,
  resolveUrl,
  retryAfterMs,
  retryPolicyOf,
} from "./protocol.js";
import { RequestOptions, Response, Sent, WxApi, send, wxLogin, wxPluginLogin } from "./wx.js";

/** Options of {@link createClient}. */
export interface ClientOptions {
  /** The issuer's (or the Envoy edge's) base URL, e.g. `https://api.example.com`. */
  baseUrl: string;
  /** Where the tokens are kept with `wx.setStorageSync` (default `"weauth.tokens"`). */
  storageKey?: string;
  /**
   * Sent with the login as `{"code","appid"}`, for an issuer that serves several
   * mini-programs; leave it out when it serves one (an issuer that knows no `appid` member
   * refuses it).
   */
  appid?: string;
  /**
   * The client runs inside a mini-program plugin: login codes come from `wx.pluginLogin`
   * and are posted with `appid`, which must then be the plugin's appid (an app of kind
   * `plugin` at the issuer). The user is known by openpid (`/v1/me` shows `openpid`).
   */
  plugin?: boolean;
  /** The `wx` object (default: the global `wx`). Tests pass a stub. */
  wx?: WxApi;
  /**
   * How a refresh (failing on the network or with 408, 429 or 5xx) or a login (the network,
   * 408, 429, 503 or 504) is retried, a login with a new `wx.login` code each time. A
   * `Retry-After` up to `maxDelayMs` is waited instead of the backoff; a longer one ends the
   * retries at once. A member left out (or `undefined`) takes its default; one that is not a
   * finite number, 0 or more, makes `createClient` throw a `TypeError`.
   */
  retry?: Partial<RetryPolicy>;
  /**
   * The issuer's refresh-token reuse grace in ms: its `WEAUTH_REFRESH_REUSE_GRACE` (default
   * 10000, the issuer's default; `0` for `0s`). Set it when the issuer runs with another one.
   *
   * Why: a refresh attempt whose outcome is unsettled — no answer (a timeout, the network), a
   * 5xx (a proxy's, say) other than the issuer's own 503 `temporarily_unavailable`, or a 200
   * without a pair (`refreshOutcomeUnsettled`) — may have rotated the refresh token at the
   * issuer all the same. Presented again within the grace of that rotation, the token gets the
   * refresh token it was rotated to; presented later, it is taken for a theft: the issuer
   * revokes the whole session (`weauth_refreshes_total{outcome="reuse"}`, a false alarm) and
   * the user has to log in anyway. So after such an attempt the client presents that refresh
   * token again — a retry, or a later request's refresh — only until this grace less 2 s
   * (`REFRESH_REUSE_MARGIN_MS`, for the retry's trip to the issuer) has passed since the
   * sending of the first attempt that left it unsettled (no later than its rotation; attempts
   * refused before it, a 429 or the issuer's 503, rotated nothing); then it drops the tokens
   * and logs in instead, one login shared as after `invalid_grant`, without waiting out a
   * backoff whose attempt could not be made. Timeouts and backoff are otherwise as `retry`
   * says.
   */
  refreshReuseGraceMs?: number;
  /** Waits `ms` (default `setTimeout`); tests pass a fake. */
  sleep?: (ms: number) => Promise<void>;
  /** A number in [0, 1) for backoff jitter (default `Math.random`). */
  random?: () => number;
  /**
   * The time in milliseconds (default `Date.now`), for how long a ban, a login refusal or a
   * `Retry-After` is held and a refresh token may be presented again (`refreshReuseGraceMs`);
   * tests pass a fake. It may be set back (the user changes the device clock): a hold is then
   * never longer than its cap, and a refresh token left unsettled is not presented again.
   */
  now?: () => number;
}

/**
 * The `e.detail` of `<button open-type="getPhoneNumber" bindgetphonenumber>`
 * (`WechatMiniprogram.ButtonGetPhoneNumber["detail"]` fits). All its members are posted as
 * they are; the issuer ignores `cloudID`, `errMsg`, `encryptedData` and `iv`.
 */
export interface PhoneNumberDetail {
  code?: string;
  errMsg?: string;
}

/**
 * The `e.detail` (or success result) of an encrypted-data API: `getUserInfo`,
 * `getWeRunData`, `getGroupEnterInfo`, … All its members are posted as they are; the issuer
 * ignores `cloudID`, `errMsg` and `userInfo`.
 */
export interface EncryptedDetail {
  encryptedData?: string;
  iv?: string;
  rawData?: string;
  signature?: string;
  errMsg?: string;
  /** Also ask WeChat (checkencryptedmsg) whether it generated the data in the last 3 days. */
  verify_with_wechat?: boolean;
}

/** The issuer's answer to `POST /v1/me/phone`. */
export interface PhoneNumber {
  phoneNumber: string;
  purePhoneNumber: string;
  countryCode: string;
}

/** The issuer's answer to `POST /v1/me/decrypt`. */
export interface Decrypted<T = Record<string, unknown>> {
  data: T;
  raw_data_verified: boolean;
  /** WeChat's verdict, present when `verify_with_wechat` was set. */
  wechat_check?: { valid: boolean; create_time?: number };
}

/** What {@link createClient} returns. */
export interface WeauthClient {
  /**
   * `wx.login` → `POST /v1/login` → tokens stored; the session of the tokens it replaces is
   * ended at the issuer, best effort. Concurrent calls (and requests that need a login at that
   * moment) share one login. A network failure, 408, 429, 503 or 504 is retried as a refresh is,
   * with a new `wx.login` code for each attempt. Rejects with {@link WeauthError}; at once,
   * with no `wx.login`, while the `Retry-After` of the issuer's last answer to a login holds.
   */
  login(): Promise<void>;
  /**
   * `wx.request` with `Authorization: Bearer`; logs in first when there are no tokens. On a
   * 401 `invalid_token`: one refresh shared by every waiting request, then one retry; on
   * `invalid_grant` (or `"relogin": true`) from the refresh, or an error answer (4xx, 5xx)
   * with `"relogin": true`: one shared login, then one retry.
   * Resolves with the answer (whatever its status); rejects with {@link WeauthError} when no
   * answer came (`network`) or no token could be had — at once, with no `wx.login`, while a
   * ban the issuer answered a login with holds (`login_failed`, `error` `user_banned`), for 60 s
   * after a login refused for the user's risk (`login_failed`, `error` `user_risky` or
   * `access_denied`: `LOGIN_REFUSAL_HOLD_MS`), or the
   * `Retry-After` of its last answer to a login (`login_failed`, with that answer's
   * `statusCode` and `error`) or to a refresh (`refresh_failed`, the tokens kept); a refresh
   * refused otherwise (a proxy's 404, 400 `invalid_request`, …) rejects with
   * `refresh_failed`, the tokens kept.
   */
  request<T = unknown>(options: RequestOptions): Promise<Response<T>>;
  /**
   * The stored tokens removed, then `POST /v1/logout` (an expired access token renewed once
   * for it, so that the session ends at the issuer too; each post waits at most 5 s for its
   * answer); the tokens are gone also when the call fails. A refresh or login in flight rejects
   * with `logged_out` and ends the session it got, in the background (a `login()` after the
   * logout does not wait for that); so do a `login()` waiting for a refresh to settle and every
   * `request()` under way that needs tokens after it (waiting for the flight, or answered 401
   * or `relogin`): none logs the user back in. The same holds for every client on this
   * storage key (another copy of this package included), whichever of them logs out; the
   * others forget the tokens they held. A `request()` called after `logout()` logs in as usual.
   */
  logout(): Promise<void>;
  /**
   * Posts the phone button's `e.detail` to `/v1/me/phone`; resolves with the number. A non-2xx
   * answer rejects with `request_failed`, its `retryAfterMs` set from a `Retry-After` (429
   * `rate_limited`: the user's allowance of WeChat calls is spent for now).
   */
  getPhoneNumber(detail: PhoneNumberDetail): Promise<PhoneNumber>;
  /**
   * Posts an encrypted `e.detail` to `/v1/me/decrypt`; resolves with the decrypted data. A
   * non-2xx answer rejects with `request_failed`, its `retryAfterMs` set as `getPhoneNumber`'s.
   */
  decrypt<T = Record<string, unknown>>(detail: EncryptedDetail): Promise<Decrypted<T>>;
  /** True when tokens are stored (they may still be expired or revoked). */
  isLoggedIn(): boolean;
}

type FlightKind = "refresh" | "login";

/**
 * How long a refresh waits for its answer. Well under the issuer's reuse grace
 * (`WEAUTH_REFRESH_REUSE_GRACE`, 10 s): an answer lost on the way is then retried with the
 * same refresh token while the issuer still answers with the token it rotated to, not a theft
 * verdict that revokes the session (`wx.request` otherwise waits `networkTimeout.request`,
 * 60 s). The retries of such a refresh stop before the grace is over, whatever the retry
 * policy (`ClientOptions.refreshReuseGraceMs`).
 */
const REFRESH_TIMEOUT_MS = 5000;

/**
 * How long a `POST /v1/logout` waits for its answer. Ending a session is best effort (the tokens
 * are gone from the device whatever the answer, and a session the issuer was not told about
 * ends when its refresh token expires), so it is not worth `wx.request`'s default of 60 s: the
 * app awaits `logout()` — up to three posts, with the renewal of an expired access token — and
 * a logout that hangs on a dead network would hold its "log out" button for minutes. 5 s is
 * ample for the issuer's one revocation write.
 */
const LOGOUT_TIMEOUT_MS = 5000;

/**
 * How long a login waits for its answer: above the issuer's longest WeChat round (its code
 * exchange, retried: 3 attempts of 5 s), so that a slow login that works is not cut short with
 * its code spent; and bounded, so that a login retried on timeouts cannot hold the requests
 * waiting for it for the minutes `wx.request`'s own 60 s would add up to.
 */
const LOGIN_TIMEOUT_MS = 20000;

/**
 * Whether a login answered `statusCode` is worth another attempt (with a new code): the
 * network, 408, 429, 503 and 504 — not 500, nor the issuer's 502, which it answers after its
 * own retries of WeChat, or when WeChat refuses the app (docs/API.md: "retrying does not mend
 * those"); each attempt spends a `wx.login` code and a WeChat exchange.
 */
function loginRetryable(statusCode: number): boolean {
  return statusCode === 408 || statusCode === 429 || statusCode === 503 || statusCode === 504;
}

function defaultWx(): WxApi {
  // `typeof` is safe on an undeclared global (Node, tests); `globalThis` is not in every
  // base library.
  if (typeof wx === "undefined") {
    throw new TypeError("weauth: no global `wx`; pass `wx` in the options");
  }
  return wx;
}

/** Creates a client. Throws a `TypeError` when `baseUrl` is not an absolute http(s) URL. */
export function createClient(options: ClientOptions): WeauthClient {
  const baseUrl = normalizeBaseUrl(options.baseUrl);
  const storageKey = options.storageKey ?? "weauth.tokens";
  const appid = options.appid;
  const plugin = options.plugin === true;
  if (plugin && appid === undefined) {
    throw new TypeError("weauth: `plugin: true` needs `appid`, the plugin's appid");
  }
  const wxApi = options.wx ?? defaultWx();
  const retry: RetryPolicy = retryPolicyOf(options.retry);
  const reuseGraceMs = options.refreshReuseGraceMs ?? DEFAULT_REFRESH_REUSE_GRACE_MS;
  if (typeof reuseGraceMs !== "number" || !(reuseGraceMs >= 0) || !Number.isFinite(reuseGraceMs)) {
    throw new TypeError("weauth: `refreshReuseGraceMs` must be a number of milliseconds, 0 or more");
  }
  const sleep =
    options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const random = options.random ?? Math.random;
  const now = options.now ?? Date.now;
  // Every client on this storage key (of this `wx`) in the JS context shares it, copies of
  // this package included: they share the tokens. With it they share the logout epoch:
  // `flight.epoch`, bumped by any one's logout() (a refresh or login that started before it
  // must not store its result, whichever client started it), and `flight.flightEpoch`, the
  // epoch the flight in progress started in.
  const flight = sharedFlight<TokenPair, FlightKind>(wxApi, storageKey);

  // The tokens in memory mirror storage; `undefined` = not loaded yet, `null` = none.
  let tokens: TokenPair | null | undefined;
  // The epoch the tokens in memory were had in: after a logout (by any client) they are gone.
  let tokensEpoch = flight.epoch;
  // False while storage failed to take the tokens in memory (they are then the only copy).
  let persisted = true;
  // Logins completed (a `relogin` answer needs one after the request it came for was sent).
  let logins = 0;
  // `flight.loginHold`: the answer the logins `request()` would start fail with at once until
  // device time `until` (at most `capMs` from when it was set), after the last login or
  // refresh was refused for a ban (`banHoldUntil`, capped at `BAN_RECHECK_MS`), or the last
  // login for the user's risk (403 `user_risky` or `access_denied`: `LOGIN_REFUSAL_HOLD_MS`):
  // each would spend a `wx.login` code (and, for a ban, leave a session row at the issuer) on
  // an answer known in advance. `login()` asks again: the app calls it when the user acts, and
  // the answer may have changed (a ban lifted early, the user verified in WeChat). Kept on the
  // shared flight, not in this client: the answer is about the user, whom every client on this
  // storage logs in, and a refresh this client's request joins may be another client's, whose
  // login (`loginAfterRefresh`) must heed a hold this client set.

  // `flight.retryAfterHolds`: what the issuer asked not to be asked again before a time
  // (device time, at most `RETRY_AFTER_MAX_HOLD_MS` from when it was set), by the kind of the
  // flight it answered: a login or a refresh answered 429 or 503 (any transient answer) with a
  // `Retry-After` the flight gave up on — longer than the retry policy waits, or on its last
  // attempt. Asking within it would meet the same answer and weigh on an issuer that is
  // shedding load (a login spends a `wx.login` code on it too); `login()` waits it out too.
  // Kept on the shared flight, not in this client, as `flight.loginHold` is: the issuer asked
  // the device, whose tokens every client on this storage shares, and a refresh this client's
  // request joins may be another client's, whose login (`loginAfterRefresh`) must heed a
  // `Retry-After` this client received.

  /**
   * The error a login the client starts by itself fails with while a ban or a refusal for the
   * user's risk holds (`flight.loginHold`, whichever client on this storage set it). A hold
   * with more left than its cap is over: only a device clock set back can make one, and it
   * must not stretch the hold (`holdOver`).
   */
  function heldLogin(): WeauthError | undefined {
    const hold = flight.loginHold;
    const at = now();
    if (hold === undefined || holdOver(hold.until, hold.capMs, at)) {
      flight.loginHold = undefined;
      return undefined;
    }
    const left = Math.ceil((hold.until - at) / 1000);
    return new WeauthError(
      "login_failed",
      `login refused: ${hold.statusCode} ${hold.error} (the issuer's answer to the last login${hold.error === "user_banned" ? " or refresh" : ""}, held ${left} s more; login() asks again)`,
      { statusCode: hold.statusCode, error: hold.error },
    );
  }

  /** Holds the logins `request()` would start after a ban, until `banHoldUntil`'s end. */
  function holdForBan(until: number): void {
    flight.loginHold = { until, capMs: BAN_RECHECK_MS, statusCode: 403, error: "user_banned" };
  }

  /**
   * The error a login or refresh fails with while the issuer's `Retry-After` for it holds
   * (`flight.retryAfterHolds`, whichever client on this storage received it); a hold with more
   * left than its cap (`RETRY_AFTER_MAX_HOLD_MS`: the device clock was set back since) is over.
   */
  function heldByRetryAfter(kind: FlightKind): WeauthError | undefined {
    const holds = flight.retryAfterHolds;
    const hold = holds?.[kind];
    const at = now();
    if (hold === undefined || holdOver(hold.until, hold.capMs, at)) {
      if (holds) {
        delete holds[kind];
      }
      return undefined;
    }
    const left = Math.ceil((hold.until - at) / 1000);
    return new WeauthError(
      kind === "login" ? "login_failed" : "refresh_failed",
      `${kind} refused: ${hold.statusCode}${hold.error ? ` ${hold.error}` : ""} (the issuer's answer to the last ${kind}, whose Retry-After holds ${left} s more)`,
      { statusCode: hold.statusCode, error: hold.error },
    );
  }

  /**
   * Notes that a refresh presents `refreshToken` now, in the flight every client on this
   * storage shares (they share the token): its first presentation is the one kept.
   */
  function notePresented(refreshToken: string): void {
    if (flight.presented?.refreshToken !== refreshToken) {
      flight.presented = { refreshToken, firstAt: now(), unsettled: false };
    }
  }

  /**
   * Notes that an attempt that presented `refreshToken`, sent at device time `sentAt`, ended
   * without saying what the issuer did with it (`refreshOutcomeUnsettled`): it may have been
   * rotated then, no sooner than `sentAt`. The grace window runs from the sending of the first
   * such attempt (the earliest, should copies of the package overlap); one from a copy from
   * before `unsettledAt` runs from `firstAt`.
   */
  function noteUnsettled(refreshToken: string, sentAt: number): void {
    const seen = flight.presented;
    if (seen?.refreshToken !== refreshToken) {
      return;
    }
    seen.unsettledAt = seen.unsettled ? Math.min(seen.unsettledAt ?? seen.firstAt, sentAt) : sentAt;
    seen.unsettled = true;
  }

  /**
   * Whether `refreshToken`, which an attempt may have rotated unseen, may no longer be
   * presented at device time `at`: its issuer's reuse grace (less a margin) has passed since
   * the sending of the first attempt that left it unsettled, and a presentation then would be
   * taken for a theft, revoking the session. So does a device time before that sending (the
   * clock was set back: how long the grace has run is unknown, `refreshPastGrace`). A token no
   * attempt left unsettled (refused with a 429 or the issuer's 503, say) may be presented at
   * any time.
   */
  function pastReuseGrace(refreshToken: string, at: number): boolean {
    const seen = flight.presented;
    return (
      seen !== undefined &&
      seen.refreshToken === refreshToken &&
      seen.unsettled &&
      refreshPastGrace(seen.unsettledAt ?? seen.firstAt, reuseGraceMs, at)
    );
  }

  /**
   * The delay before attempt `attempt + 1` of a login or refresh whose attempt `attempt` met
   * `failure`, a network failure or a transient `answer` (408, 429, 5xx); undefined to give up.
   * The answer's `Retry-After` is waited instead of the backoff when it is no longer than
   * `maxDelayMs`. A longer one — or one on the last attempt — ends the retries, and the logins
   * (or refreshes) of every client on this storage are held until it has passed, at most
   * {@link RETRY_AFTER_MAX_HOLD_MS}: a retry within the issuer's window would be refused again
   * (or, capped to our delay as it once was, add to the load it asked to be spared).
   */
  function retryDelay(
    kind: FlightKind,
    attempt: number,
    answer: Response | undefined,
    failure: WeauthError,
  ): number | undefined {
    const wait = answer ? retryAfterMs(answer.header, now()) : undefined;
    if (wait === undefined) {
      return attempt >= retry.attempts ? undefined : backoffDelay(attempt, retry, random());
    }
    if (attempt >= retry.attempts || wait > retry.maxDelayMs) {
      if (wait > 0) {
        // On the flight every client on this storage shares: all of them heed it.
        const holds = flight.retryAfterHolds ?? (flight.retryAfterHolds = {});
        holds[kind] = {
          until: now() + Math.min(wait, RETRY_AFTER_MAX_HOLD_MS),
          capMs: RETRY_AFTER_MAX_HOLD_MS,
          statusCode: failure.statusCode ?? 0,
          error: failure.error,
        };
      }
      return undefined;
    }
    return wait;
  }

  /** Keeps `pair` in memory as this epoch's tokens. */
  function keep(pair: TokenPair | null): TokenPair | null {
    tokens = pair;
    tokensEpoch = flight.epoch;
    return pair;
  }

  /**
   * The tokens in memory, read from storage when there are none yet — or when a client on
   * this storage (another copy of this package, say) has logged out since they were had: they
   * are of a session that logout ended, and storage, which it emptied, is read again.
   */
  function current(): TokenPair | null {
    if (tokensEpoch !== flight.epoch) {
      tokens = undefined;
      persisted = true;
    }
    if (tokens === undefined) {
      let stored: unknown;
      try {
        stored = wxApi.getStorageSync(storageKey);
      } catch {
        stored = undefined;
      }
      keep(parseStored(stored) ?? null);
    }
    return tokens ?? null;
  }

  /**
   * The tokens as storage has them now: another client on the same storage (a copy of this
   * package in an independent sub-package) may have refreshed since this one read them, and
   * the refresh token in memory is then spent — presenting it again would read as theft and
   * end the session. Memory wins while storage could not take its tokens.
   */
  function reload(): TokenPair | null {
    if (!persisted) {
      return current();
    }
    let stored: unknown;
    try {
      stored = wxApi.getStorageSync(storageKey);
    } catch {
      return current();
    }
    return keep(parseStored(stored) ?? null);
  }

  function store(pair: TokenPair | null): void {
    keep(pair);
    try {
      if (pair) {
        wxApi.setStorageSync(storageKey, { ...pair });
      } else {
        wxApi.removeStorageSync(storageKey);
      }
      persisted = true;
    } catch {
      // Storage full or unavailable: the tokens still work from memory for this run. What
      // storage still holds is older, and after a refresh its refresh token is spent: the next
      // launch would present it, and the issuer would take that for reuse (theft) and revoke
      // the session. Removed, best effort, so that launch logs in cleanly instead.
      persisted = false;
      try {
        wxApi.removeStorageSync(storageKey);
      } catch {
        // Nothing more to do: that launch recovers with one login after the revocation.
      }
    }
  }

  function postJson(
    path: string,
    data: Record<string, unknown>,
    bearer?: string,
    timeout?: number,
  ): Promise<Sent> {
    const header: Record<string, string> = { "content-type": "application/json" };
    if (bearer !== undefined) {
      header.authorization = `Bearer ${bearer}`;
    }
    const options: WechatMiniprogram.RequestOption = {
      url: `${baseUrl}${path}`,
      method: "POST",
      data,
      header,
    };
    if (timeout !== undefined) {
      options.timeout = timeout;
    }
    return send(wxApi, options);
  }

  function postRefresh(refreshToken: string): Promise<Sent> {
    return postJson("/v1/token/refresh", { refresh_token: refreshToken }, undefined, REFRESH_TIMEOUT_MS);
  }

  /**
   * Ends `pair`'s session at the issuer, best effort (every failure is ignored). An access
   * token that has expired meanwhile (401) is renewed once with the pair's refresh token
   * first: the logout has to reach the issuer, else the session lives on there until its
   * refresh token expires. Not with `renew` false: a refresh in flight has presented that
   * refresh token, and a second presentation is reuse to the issuer once its grace is over
   * (at once with `WEAUTH_REFRESH_REUSE_GRACE=0s`) — a false theft signal; that refresh ends
   * the session with the pair it gets instead. Nor when a refresh attempt may have rotated it
   * unseen and its grace is over (`pastReuseGrace`), for the same reason: the session then
   * expires at the issuer. Each post waits at most `LOGOUT_TIMEOUT_MS` for its answer (the
   * renewal `REFRESH_TIMEOUT_MS`), so `logout()` settles within 15 s whatever the network does.
   */
  async function endSession(pair: TokenPair, renew = true): Promise<void> {
    const sent = await postJson("/v1/logout", {}, pair.accessToken, LOGOUT_TIMEOUT_MS);
    if (!renew || !sent.ok || sent.response.statusCode !== 401 || pastReuseGrace(pair.refreshToken, now())) {
      return;
    }
    const renewed = await postRefresh(pair.refreshToken);
    const fresh =
      renewed.ok && renewed.response.statusCode === 200
        ? parseTokenResponse(renewed.response.data)
        : undefined;
    if (fresh) {
      await postJson("/v1/logout", {}, fresh.accessToken, LOGOUT_TIMEOUT_MS);
    }
  }

  /**
   * Ends `pair`'s session as `endSession` does, without waiting for it: called from inside the
   * flight (a refresh or login overtaken by a `logout()`, a login that replaced a pair), where
   * awaiting it would keep the flight unsettled — and every `login()` or `request()` started
   * after the logout waiting for it — for as long as the issuer takes to answer the logout.
   * Nothing can come of a failure (it is best effort), so none reaches the caller or surfaces
   * as an unhandled rejection.
   */
  function endSessionInBackground(pair: TokenPair): void {
    endSession(pair).catch(() => undefined);
  }

  /** Starts (or joins) the flight, noting the epoch a new one starts in. */
  function fly(kind: FlightKind, fn: (startEpoch: number) => Promise<TokenPair>): Promise<TokenPair> {
    if (!flight.promise) {
      flight.flightEpoch = flight.epoch;
    }
    const startEpoch = flight.epoch;
    return flight.run(kind, () => fn(startEpoch));
  }

  /**
   * `inFlight`, whose pair this client takes as its own when it settles (unless a `logout()`
   * came first, this client's or another's on this storage): the flight may be another
   * client's on this storage key (a copy of this package elsewhere in the app), whose pair
   * this client's memory does not hold yet.
   */
  function join(inFlight: Promise<TokenPair>): Promise<TokenPair> {
    const joinEpoch = flight.epoch;
    return inFlight.then((pair) => {
      if (flight.epoch === joinEpoch) {
        keep(pair);
      }
      return pair;
    });
  }

  /** The flight in progress, if it started in this epoch (one from before a logout ends in `logged_out`). */
  function currentFlight(): Promise<TokenPair> | undefined {
    return flight.flightEpoch === flight.epoch ? flight.promise : undefined;
  }

  /**
   * The login itself (always inside the flight). A network failure, 408, 429, 503 or 504 is retried
   * as a refresh is (`retryDelay`), each attempt with a code of its own from a new `wx.login`:
   * a code is single use, and one whose post got no answer, or a 5xx, may have reached the
   * issuer and been spent there — posted again it would be refused as `invalid_grant`, which
   * says nothing of what went wrong. A `wx.login` that fails is not retried (it is local).
   */
  async function doLogin(startEpoch: number): Promise<TokenPair> {
    for (let attempt = 1; ; attempt++) {
      const held = heldByRetryAfter("login");
      if (held) {
        throw held;
      }
      let code: string;
      try {
        code = plugin ? await wxPluginLogin(wxApi) : await wxLogin(wxApi);
      } catch (e) {
        throw new WeauthError("wx_login_failed", e instanceof Error ? e.message : String(e));
      }
      const body: Record<string, unknown> = { code };
      if (appid !== undefined) {
        body.appid = appid;
      }
      const sent = await postJson("/v1/login", body, undefined, LOGIN_TIMEOUT_MS);
      const pair =
        sent.ok && sent.response.statusCode === 200 ? parseTokenResponse(sent.response.data) : undefined;
      if (pair) {
        if (flight.epoch !== startEpoch) {
          // The session exists at the issuer now: end it, or nobody could — in the
          // background, so that the flight settles now and a login() after the logout does
          // not wait for the issuer's answer to it.
          endSessionInBackground(pair);
          throw new WeauthError("logged_out", "logout() was called during the login");
        }
        flight.loginHold = undefined;
        const replaced = reload();
        store(pair);
        logins++;
        if (replaced && replaced.refreshToken !== pair.refreshToken) {
          // A re-login (`relogin`), or login() while logged in: the old session is nobody's
          // now, and its refresh token would stay good for days. Ended best effort, as
          // logout() does, without holding up the requests that wait for this login. (No
          // refresh is in flight to have presented its refresh token: this login is the flight.)
          endSessionInBackground(replaced);
        }
        return pair;
      }
      let failure: WeauthError;
      let answer: Response | undefined;
      if (!sent.ok) {
        failure = new WeauthError("network", `login: ${sent.errMsg}`);
      } else {
        const { statusCode, data, header } = sent.response;
        const err = issuerError(data);
        failure = new WeauthError(
          "login_failed",
          `login refused: ${statusCode} ${err.error ?? ""} ${err.description ?? ""}`.trim(),
          { statusCode, error: err.error },
        );
        if (!loginRetryable(statusCode)) {
          const ban = banOf(statusCode, data);
          const refusal = loginRefusalOf(statusCode, data);
          if (ban) {
            holdForBan(banHoldUntil(ban, headerValue(header, "date"), now()));
          } else if (refusal) {
            // The user's risk, judged by WeChat: another code now would meet the same answer.
            // Held for a short, fixed time, since the issuer states no end for it.
            flight.loginHold = {
              until: now() + LOGIN_REFUSAL_HOLD_MS,
              capMs: LOGIN_REFUSAL_HOLD_MS,
              statusCode,
              error: refusal,
            };
          }
          throw failure;
        }
        answer = sent.response;
      }
      const delay = retryDelay("login", attempt, answer, failure);
      if (delay === undefined) {
        throw failure;
      }
      // No new attempt (nor wait for one) once logout() has been called: it would log the user
      // back in, or end the session it got at best.
      if (flight.epoch === startEpoch) {
        await sleep(delay);
      }
      if (flight.epoch !== startEpoch) {
        throw new WeauthError("logged_out", "logout() was called during the login");
      }
    }
  }

  /**
   * The refresh itself (always inside the flight). Network failures and 408, 429 and 5xx are
   * retried with backoff and, when they persist, rejected as such with the tokens kept. 403
   * `user_banned` drops the tokens, holds the logins as a login's ban does and rejects
   * (`refresh_failed`): a login now would be refused too. A refusal that says the refresh
   * token is no good (`invalid_grant`, `"relogin": true`: `refreshTokenRefused`) means the
   * session is gone: the tokens are dropped and a login follows in the same flight — unless a
   * ban or a refusal for the user's risk holds the logins (`loginAfterRefresh`). Any other
   * refusal (a proxy's 404 or 413, 400 `invalid_request`, a 403 that is no ban) rejects
   * (`refresh_failed`) with the tokens kept and no login: it says nothing about the refresh
   * token, and a login would spend a `wx.login` code and log the user out of a live session.
   */
  async function doRefresh(pair: TokenPair, startEpoch: number): Promise<TokenPair> {
    const held = heldByRetryAfter("refresh");
    if (held) {
      // The tokens are kept: the refresh is tried again once the issuer's window has passed.
      throw held;
    }
    for (let attempt = 1; ; attempt++) {
      if (pastReuseGrace(pair.refreshToken, now())) {
        return refreshTokenLapsed(startEpoch);
      }
      notePresented(pair.refreshToken);
      const sentAt = now();
      const sent = await postRefresh(pair.refreshToken);
      // No answer, a 5xx that is not the issuer's own 503, a 200 without a pair: the request
      // may have reached the issuer and rotated the token, its answer lost. A failure with no
      // answer counts so whatever its errMsg: none reliably says nothing was sent.
      if (
        sent.ok
          ? refreshOutcomeUnsettled(sent.response.statusCode, sent.response.data)
          : refreshOutcomeUnsettled(undefined, undefined)
      ) {
        noteUnsettled(pair.refreshToken, sentAt);
      }
      if (flight.epoch !== startEpoch) {
        const fresh =
          sent.ok && sent.response.statusCode === 200
            ? parseTokenResponse(sent.response.data)
            : undefined;
        if (fresh) {
          // The rotated pair is the session's only live one: end the session with it — in
          // the background, so that the flight settles now (`endSessionInBackground`).
          endSessionInBackground(fresh);
        }
        throw new WeauthError("logged_out", "logout() was called during the refresh");
      }
      let failure: WeauthError;
      // A transient answer, whose `Retry-After` is heeded.
      let answer: Response | undefined;
      if (!sent.ok) {
        failure = new WeauthError("network", `refresh: ${sent.errMsg}`);
      } else if (sent.response.statusCode === 200) {
        const fresh = parseTokenResponse(sent.response.data);
        if (fresh) {
          store(fresh);
          return fresh;
        }
        // The issuer answered, so it most likely rotated the token: its pair was lost (noted
        // unsettled above).
        failure = new WeauthError("refresh_failed", "refresh: 200 without a token pair", {
          statusCode: 200,
        });
      } else if (isTransient(sent.response.statusCode)) {
        const err = issuerError(sent.response.data);
        failure = new WeauthError(
          "refresh_failed",
          `refresh: ${sent.response.statusCode} ${err.error ?? ""}`.trim(),
          { statusCode: sent.response.statusCode, error: err.error },
        );
        answer = sent.response;
      } else {
        const err = issuerError(sent.response.data);
        const ban = banOf(sent.response.statusCode, sent.response.data);
        if (ban) {
          store(null);
          // The issuer refuses the user's logins as well while the ban lasts (docs/API.md): a
          // login now would spend a wx.login code, and leave a session row, on that refusal.
          holdForBan(banHoldUntil(ban, headerValue(sent.response.header, "date"), now()));
          throw new WeauthError(
            "refresh_failed",
            `refresh refused: 403 user_banned ${err.description ?? ""}`.trim(),
            { statusCode: 403, error: "user_banned" },
          );
        }
        if (refreshTokenRefused(sent.response.statusCode, sent.response.data)) {
          // 400 invalid_grant (used, unknown, expired or revoked), or relogin: log in again.
          return loginAfterRefresh(startEpoch);
        }
        // Not about the refresh token (a proxy's 404 or 413, 400 invalid_request, a 403 that
        // is no ban): retrying would meet it again, and a login would end a session that may
        // be live. The tokens are kept; a later request tries the refresh again.
        throw new WeauthError(
          "refresh_failed",
          `refresh refused: ${sent.response.statusCode} ${err.error ?? ""} ${err.description ?? ""}`.trim(),
          { statusCode: sent.response.statusCode, error: err.error },
        );
      }
      const delay = retryDelay("refresh", attempt, answer, failure);
      if (delay === undefined) {
        // The tokens are kept: the next refresh presents the refresh token again, while its
        // grace lasts (`pastReuseGrace`), or logs in.
        throw failure;
      }
      if (pastReuseGrace(pair.refreshToken, now() + delay)) {
        // The attempt after the wait could not present the token: no wait for it.
        return refreshTokenLapsed(startEpoch);
      }
      await sleep(delay);
      // A logout() during the wait goes on to the attempt all the same, and that attempt ends
      // in `logged_out` at the top of the loop, ending the session with the pair it gets:
      // logout() left the refresh token to this refresh, which has presented it (a second
      // presenter could be taken for a thief), so only this refresh can still end the session
      // — unless the wait outlasted the token's grace (a suspended timer), which leaves the
      // session to expire at the issuer.
    }
  }

  /**
   * The refresh token of the refresh in flight may have been rotated by an attempt whose
   * answer was lost, and its reuse grace is (nearly) over: presented again, it would be taken
   * for a theft and the session revoked (a false alarm at the issuer, and a login all the
   * same). The tokens are dropped and a login follows in the same flight, as after
   * `invalid_grant`; the old session, which nothing here can reach any more, expires at the
   * issuer. After a `logout()` (the flight's result is not wanted): `logged_out`, nothing sent.
   */
  async function refreshTokenLapsed(startEpoch: number): Promise<TokenPair> {
    if (flight.epoch !== startEpoch) {
      throw new WeauthError("logged_out", "logout() was called during the refresh");
    }
    return loginAfterRefresh(startEpoch);
  }

  /**
   * The login a refresh turns into, in the same flight, once its refresh token is no good
   * (refused, `refreshTokenRefused`; or past its reuse grace, `refreshTokenLapsed`). The tokens
   * are dropped whatever follows: the refresh token can no longer be presented. While a ban or a
   * refusal for the user's risk holds (`heldLogin`), the flight rejects with that answer at
   * once, without a `wx.login`, as `renew` does before a login of its own: this login was not
   * asked for by the app either, and it would spend a code (and, for a ban, leave a session row
   * at the issuer) on an answer known in advance. The hold is the one every client on this
   * storage shares: the requests waiting for this flight may be other clients' (copies of the
   * package), one of which may have set it. A refresh flight is only ever started by
   * `request()` (`renew`): `login()` waits for it to settle and then starts a login of its own,
   * which asks the issuer again whatever the hold.
   */
  async function loginAfterRefresh(startEpoch: number): Promise<TokenPair> {
    store(null);
    const held = heldLogin();
    if (held) {
      throw held;
    }
    flight.relabel("login");
    return doLogin(startEpoch);
  }

  /**
   * A login shared with any login in flight of this epoch (after any refresh in flight, or
   * any flight from before a logout, has settled). Rejects with `logged_out` when `logout()`
   * is called while it waits.
   */
  async function loginShared(): Promise<TokenPair> {
    const callEpoch = flight.epoch;
    for (;;) {
      checkNotLoggedOut(callEpoch);
      const inFlight = flight.promise;
      if (!inFlight) {
        return fly("login", doLogin);
      }
      if (flight.kind === "login" && currentFlight()) {
        return join(inFlight);
      }
      await inFlight.catch(() => undefined);
    }
  }

  /**
   * Throws `logged_out` when `logout()` was called since `callEpoch`, by this client or
   * another on this storage: a call that started before it must not log the user back in
   * (nor a request go out with the tokens of a login after it).
   */
  function checkNotLoggedOut(callEpoch: number): void {
    if (flight.epoch !== callEpoch) {
      throw new WeauthError("logged_out", "logout() was called while this call was under way");
    }
  }

  /**
   * New tokens because `stale` was refused with `verdict`, for a request started in
   * `requestEpoch` and sent after `loginsBefore` logins. Joins what is in flight (of this
   * epoch); if nothing is and the tokens have already moved on from `stale` — any new pair
   * for a refresh, a new login for a `relogin` (a refreshed pair keeps the old session_key) —
   * uses the current ones; otherwise starts the refresh (or login). Rejects with `logged_out`,
   * starting nothing, once `logout()` has been called since the request started.
   */
  async function renew(
    stale: TokenPair | null,
    verdict: "refresh" | "relogin",
    loginsBefore: number,
    requestEpoch: number,
  ): Promise<TokenPair> {
    for (;;) {
      checkNotLoggedOut(requestEpoch);
      const inFlight = flight.promise;
      if (inFlight) {
        if (!currentFlight() || (verdict === "relogin" && flight.kind === "refresh")) {
          // From before a logout; or a refresh, which keeps the old session_key: wait for
          // it, then decide again.
          await inFlight.catch(() => undefined);
          continue;
        }
        return join(inFlight);
      }
      const inMemory = tokens;
      const stored = reload();
      // Storage moved on behind this client: another one refreshed (its access token may be
      // as old as ours, and our refresh token is spent).
      const elsewhere = !!stored && !!inMemory && stored.accessToken !== inMemory.accessToken;
      const movedOn =
        !stale ||
        (verdict === "relogin" ? logins > loginsBefore : stored?.accessToken !== stale.accessToken);
      if (stored && movedOn && !(verdict === "refresh" && elsewhere)) {
        return stored;
      }
      if (verdict === "refresh" && stored) {
        return fly("refresh", (startEpoch) => doRefresh(stored, startEpoch));
      }
      const held = heldLogin();
      if (held) {
        throw held;
      }
      return fly("login", doLogin);
    }
  }

  /**
   * A request to `baseUrl`'s origin with `pair`'s access token: the caller's own
   * `Authorization` (whatever the case of its name) gives way to it, so that one goes out.
   */
  function sendWithToken(options: RequestOptions, url: string, pair: TokenPair): Promise<Sent> {
    const header: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(options.header ?? {})) {
      if (k.toLowerCase() !== "authorization") {
        header[k] = v;
      }
    }
    header.authorization = `Bearer ${pair.accessToken}`;
    return send(wxApi, { ...options, url, header });
  }

  function answer<T>(sent: Sent): Response<T> {
    if (!sent.ok) {
      throw new WeauthError("network", sent.errMsg);
    }
    return sent.response as Response<T>;
  }

  async function request<T>(options: RequestOptions): Promise<Response<T>> {
    const target = resolveUrl(baseUrl, options.url);
    if (!target.withToken) {
      // Another origin: no token of ours goes there, so the caller's headers go as they are —
      // its own `Authorization` (a partner API's key) included.
      return answer<T>(await send(wxApi, { ...options, url: target.url }));
    }
    const requestEpoch = flight.epoch;
    if (flight.promise) {
      // A refresh or login is under way: its tokens are the ones to send (no doomed 401).
      await join(flight.promise).catch(() => undefined);
      checkNotLoggedOut(requestEpoch);
    }
    let pair = current();
    if (!pair) {
      pair = await renew(null, "relogin", logins, requestEpoch);
    }
    const loginsBefore = logins;
    const first = answer<T>(await sendWithToken(options, target.url, pair));
    const verdict = classify(first.statusCode, first.data, first.header);
    if (verdict === "done") {
      return first;
    }
    const fresh = await renew(pair, verdict, loginsBefore, requestEpoch);
    return answer<T>(await sendWithToken(options, target.url, fresh));
  }

  async function postDetail<T>(path: string, detail: Record<string, unknown>): Promise<T> {
    const res = await request<T>({
      url: path,
      method: "POST",
      data: detail,
      header: { "content-type": "application/json" },
    });
    if (res.statusCode >= 200 && res.statusCode < 300) {
      return res.data;
    }
    const err = issuerError(res.data);
    // The issuer's per-user allowance of WeChat calls answers 429 `rate_limited` with a
    // `Retry-After` (docs/API.md): passed on, so that the app can tell the user when to try
    // again instead of letting them tap into the same refusal.
    throw new WeauthError(
      "request_failed",
      `${path}: ${res.statusCode} ${err.error ?? ""} ${err.description ?? ""}`.trim(),
      {
        statusCode: res.statusCode,
        error: err.error,
        relogin: err.relogin,
        retryAfterMs: retryAfterMs(res.header, now()),
      },
    );
  }

  return {
    async login() {
      await loginShared();
    },

    request,

    async logout() {
      const pair = reload();
      // A refresh in flight (this client's or another's on this storage) has presented the
      // stored refresh token — storage takes no other pair while it runs — or is about to: it
      // ends the session itself with the pair it gets, and that refresh token is not presented
      // a second time here.
      const refreshing = flight.promise !== undefined && flight.kind === "refresh";
      flight.epoch++;
      store(null);
      if (pair) {
        // Best effort: the tokens are gone from the device whatever the answer; a session the
        // issuer could not be told about ends when its refresh token expires. A refresh or
        // login in flight ends the session it gets itself.
        await endSession(pair, !refreshing);
      }
    },

    getPhoneNumber(detail) {
      if (!detail || typeof detail.code !== "string" || detail.code === "") {
        return Promise.reject(
          new WeauthError("user_denied", `no phone code in e.detail (${detail?.errMsg ?? "no errMsg"})`),
        );
      }
      return postDetail<PhoneNumber>("/v1/me/phone", { ...(detail as Record<string, unknown>) });
    },

    decrypt<T>(detail: EncryptedDetail) {
      if (!detail || typeof detail.encryptedData !== "string" || typeof detail.iv !== "string") {
        return Promise.reject(
          new WeauthError("user_denied", `no encryptedData in e.detail (${detail?.errMsg ?? "no errMsg"})`),
        );
      }
      return postDetail<Decrypted<T>>("/v1/me/decrypt", { ...(detail as Record<string, unknown>) });
    },

    isLoggedIn() {
      return current() !== null;
    },
  };
}
