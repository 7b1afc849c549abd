/**
 * @file The one error type the client rejects with, and its stable codes.
 *
 * Messages are written for the developer reading a log; they never carry a token, a login
 * code or a session_key (only WeChat's `errMsg` texts and the issuer's `error_description`,
 * neither of which contains one).
 */

/**
 * Why a call failed. `code` is stable:
 * - `network`: `wx.request` failed (no answer); for a login or refresh only after its retries.
 *   The stored tokens are KEPT: a network failure never logs the user out. (A later refresh
 *   past the refresh token's reuse grace logs in silently instead of presenting it again:
 *   `ClientOptions.refreshReuseGraceMs`.)
 * - `wx_login_failed`: `wx.login` (or `wx.pluginLogin`) failed or gave no code within 10 s
 *   (its `errMsg` is the message).
 * - `login_failed`: `POST /v1/login` did not give tokens (a transient error, 408, 429 or 5xx,
 *   after its retries); `statusCode` and `error` say why. Also at once, with nothing sent, while
 *   a ban or the `Retry-After` of the issuer's last answer to a login holds, or (for the logins
 *   `request()` starts) for 60 s after a login refused 403 `user_risky` or `access_denied`.
 * - `refresh_failed`: `POST /v1/token/refresh` kept answering a transient error (408, 429,
 *   5xx; the tokens are kept; at once, with nothing sent, while the `Retry-After` of its last
 *   such answer holds), or refused it for a ban (403, `error` `user_banned`: the tokens
 *   are dropped, and the logins a request would start are held as after a login's ban), or
 *   refused it for a reason that is not about the refresh token (any other answer but
 *   `invalid_grant` or `"relogin": true`, which lead to a login: a proxy's 404 or 413, 400
 *   `invalid_request`, another 403; the tokens are kept, no `wx.login` is spent).
 *   `statusCode` and `error` say which.
 * - `logged_out`: `logout()` was called (on this client or another on its storage key) while
 *   this call was waiting for a refresh or login, or before a `request()` under way needed
 *   new tokens (it does not log the user back in).
 * - `user_denied`: the button's `e.detail` holds no data (the user tapped "deny").
 * - `request_failed`: `getPhoneNumber` / `decrypt` got a non-2xx answer; `statusCode`,
 *   `error` (the issuer's code) and `relogin` are set, and `retryAfterMs` when the answer had a
 *   `Retry-After`: 429 `rate_limited` once the user's allowance of WeChat calls is spent
 *   (docs/API.md), so the app can tell the user when to try again.
 */
export type WeauthErrorCode =
  | "network"
  | "wx_login_failed"
  | "login_failed"
  | "refresh_failed"
  | "logged_out"
  | "user_denied"
  | "request_failed";

/** A failed client call. */
export class WeauthError extends Error {
  /** The stable reason (see {@link WeauthErrorCode}). */
  readonly code: WeauthErrorCode;
  /** The HTTP status, when an answer arrived. */
  readonly statusCode?: number;
  /** The issuer's stable `error` member, when the answer had one. */
  readonly error?: string;
  /** True when the issuer asked for a new login (`"relogin": true`). */
  readonly relogin: boolean;
  /**
   * How long the issuer asked to wait before asking again, in milliseconds: its answer's
   * `Retry-After`, in seconds or as an HTTP-date (counted from the answer's `Date`, so a wrong
   * device clock does not skew it). Set on a `request_failed` whose answer carried one — 429
   * `rate_limited` past the user's allowance of WeChat calls, say — and undefined otherwise.
   */
  readonly retryAfterMs?: number;

  constructor(
    code: WeauthErrorCode,
    message: string,
    extra: { statusCode?: number; error?: string; relogin?: boolean; retryAfterMs?: number } = {},
  ) {
    super(message);
    this.name = "WeauthError";
    this.code = code;
    this.statusCode = extra.statusCode;
    this.error = extra.error;
    this.relogin = extra.relogin === true;
    this.retryAfterMs = extra.retryAfterMs;
  }
}
