/**
 * @file A `wx` stub for the unit tests, and a small in-memory stand-in for the issuer behind
 * it that keeps the rules the client depends on: single-use refresh tokens whose reuse
 * revokes the session (after an optional reuse grace, `reuseGraceMs`), 401 `invalid_token`
 * (with a Bearer challenge) for an expired or revoked access token, 400 `invalid_grant` for a
 * refused refresh token. Every answer is delivered on a later macrotask, so concurrent requests
 * really interleave.
 */
import type { WxApi } from "../../src/wx.js";

/** One request as the stub saw it. */
export interface SeenRequest {
  method: string;
  url: string;
  path: string;
  header: Record<string, unknown>;
  data: unknown;
}

/** What the stub answers: an HTTP answer, or a network failure (wx's `fail`). */
export type StubAnswer =
  | { statusCode: number; data?: unknown; header?: Record<string, string> }
  | { fail: string };

/** Decides the answer to one request (after the fault hooks). */
export type Handler = (req: SeenRequest) => StubAnswer;

/** A macrotask later: lets every request issued in the same tick be in flight at once. */
export function tick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** The stand-in issuer: sessions, token rotation with reuse detection, a protected route. */
export class FakeIssuer {
  private n = 0;
  /** access token → session id, for tokens still accepted. */
  readonly access = new Map<string, number>();
  /** refresh token → { session, used, and when it was rotated to which refresh token }. */
  readonly refresh = new Map<string, { sid: number; used: boolean; usedAt?: number; successor?: string }>();
  readonly revokedSessions = new Set<number>();
  logins = 0;
  refreshes = 0;
  reuses = 0;
  /** Second uses within the reuse grace (`weauth_refreshes_total{outcome="grace"}`). */
  repeats = 0;
  /**
   * The issuer's `WEAUTH_REFRESH_REUSE_GRACE` in ms: a used refresh token presented again at
   * most this long after its rotation (by `clock`) gets the refresh token it was rotated to and
   * a new access token. 0 (the default here): every second use is reuse.
   */
  reuseGraceMs = 0;
  /** The issuer's clock (ms), for the reuse grace. */
  clock: () => number = Date.now;
  /** Codes handed out by the stub's wx.login, each usable once. */
  readonly codes = new Set<string>();
  /**
   * Every token ever minted, access and refresh, also after `expireAccessTokens()` or
   * `revokeAll()` forgot them (for the tests that check no secret reaches an error text).
   */
  readonly minted = new Set<string>();

  newCode(): string {
    const code = `code-${++this.n}`;
    this.codes.add(code);
    return code;
  }

  private pair(sid: number): { access_token: string; refresh_token: string } {
    const access = `at-${++this.n}`;
    const refresh = `rt-${++this.n}`;
    this.access.set(access, sid);
    this.refresh.set(refresh, { sid, used: false });
    this.minted.add(access).add(refresh);
    return { access_token: access, refresh_token: refresh };
  }

  /** Every access token issued so far stops being accepted (as if expired). */
  expireAccessTokens(): void {
    this.access.clear();
  }

  /** Revokes every session (admin revoke / logout elsewhere). */
  revokeAll(): void {
    for (const sid of this.access.values()) {
      this.revokedSessions.add(sid);
    }
    for (const entry of this.refresh.values()) {
      this.revokedSessions.add(entry.sid);
    }
    this.access.clear();
  }

  private bearer(req: SeenRequest): number | undefined {
    const auth = String(req.header.authorization ?? "");
    const token = auth.startsWith("Bearer ") ? auth.slice(7) : "";
    const sid = this.access.get(token);
    return sid !== undefined && !this.revokedSessions.has(sid) ? sid : undefined;
  }

  private static invalidToken(): StubAnswer {
    return {
      statusCode: 401,
      data: { error: "invalid_token", error_description: "the token has expired" },
      header: { "WWW-Authenticate": 'Bearer error="invalid_token"' },
    };
  }

  /** The default handler: the issuer's routes plus `GET /api/*` (needs a token). */
  handle: Handler = (req) => {
    const body = (req.data ?? {}) as Record<string, unknown>;
    if (req.method === "POST" && req.path === "/v1/login") {
      const code = String(body.code ?? "");
      if (!this.codes.delete(code)) {
        return { statusCode: 400, data: { error: "invalid_grant", error_description: "bad code" } };
      }
      this.logins++;
      return { statusCode: 200, data: { ...this.pair(++this.n), token_type: "Bearer", expires_in: 900 } };
    }
    if (req.method === "POST" && req.path === "/v1/token/refresh") {
      this.refreshes++;
      const entry = this.refresh.get(String(body.refresh_token ?? ""));
      if (!entry || this.revokedSessions.has(entry.sid)) {
        return { statusCode: 400, data: { error: "invalid_grant", error_description: "unknown" } };
      }
      if (entry.used) {
        if (this.reuseGraceMs > 0 && this.clock() - entry.usedAt! <= this.reuseGraceMs) {
          this.repeats++;
          const access = `at-${++this.n}`;
          this.access.set(access, entry.sid);
          this.minted.add(access);
          return { statusCode: 200, data: { access_token: access, refresh_token: entry.successor } };
        }
        this.reuses++;
        this.revokedSessions.add(entry.sid);
        return { statusCode: 400, data: { error: "invalid_grant", error_description: "reused" } };
      }
      entry.used = true;
      entry.usedAt = this.clock();
      const pair = this.pair(entry.sid);
      entry.successor = pair.refresh_token;
      return { statusCode: 200, data: pair };
    }
    if (req.method === "POST" && req.path === "/v1/logout") {
      const sid = this.bearer(req);
      if (sid === undefined) {
        return FakeIssuer.invalidToken();
      }
      this.revokedSessions.add(sid);
      return { statusCode: 204, data: "" };
    }
    if (req.path.startsWith("/api/") || req.path.startsWith("/v1/me")) {
      const sid = this.bearer(req);
      if (sid === undefined) {
        return FakeIssuer.invalidToken();
      }
      return { statusCode: 200, data: { ok: true, sid, path: req.path } };
    }
    return { statusCode: 404, data: { error: "not_found" } };
  };
}

/** The `wx` stub: storage in a Map (JSON round trip, as wx does), requests to a handler. */
export class WxStub implements WxApi {
  readonly storage = new Map<string, string>();
  readonly requests: SeenRequest[] = [];
  wxLogins = 0;
  /** When set, the next wx.login calls fail with this errMsg. */
  loginFailure: string | undefined;
  /** Hooks consulted before the handler; the first to return an answer wins. */
  readonly faults: Array<(req: SeenRequest) => StubAnswer | undefined> = [];
  /** When set, `setStorageSync` throws an Error with this message and stores nothing (storage full). */
  setStorageFailure: string | undefined;
  /** When set, `removeStorageSync` throws an Error with this message and removes nothing. */
  removeStorageFailure: string | undefined;
  /** When it returns a promise, the answer (decided when the request was sent) waits for it. */
  hold: (req: SeenRequest) => Promise<void> | undefined = () => undefined;

  constructor(
    readonly issuer: FakeIssuer,
    public handler: Handler = issuer.handle,
  ) {}

  /** Requests whose path is `path`. */
  count(path: string): number {
    return this.requests.filter((r) => r.path === path).length;
  }

  /** `wx.pluginLogin` calls (a plugin's login). */
  pluginLogins = 0;

  pluginLogin(option: { success?: (res: { code?: string; errMsg?: string }) => void }): void {
    this.pluginLogins++;
    void tick().then(() => option.success?.({ code: this.issuer.newCode(), errMsg: "pluginLogin:ok" }));
  }

  login(option: WechatMiniprogram.LoginOption): void {
    this.wxLogins++;
    const failure = this.loginFailure;
    void tick().then(() => {
      if (failure !== undefined) {
        option.fail?.({ errMsg: failure, errno: 1 });
      } else {
        option.success?.({ code: this.issuer.newCode(), errMsg: "login:ok" });
      }
    });
  }

  request(option: WechatMiniprogram.RequestOption): void {
    const url = option.url;
    const m = /^https?:\/\/[^/]+(\/[^?#]*)?/.exec(url);
    const req: SeenRequest = {
      method: option.method ?? "GET",
      url,
      path: m?.[1] ?? "/",
      header: { ...(option.header ?? {}) },
      // wx.request serializes an object body; a round trip keeps the stub honest about that.
      data: option.data === undefined ? undefined : JSON.parse(JSON.stringify(option.data)),
    };
    this.requests.push(req);
    let answer: StubAnswer | undefined;
    for (const fault of this.faults) {
      answer = fault(req);
      if (answer) {
        break;
      }
    }
    const final = answer ?? this.handler(req);
    void (this.hold(req) ?? tick()).then(() => {
      if ("fail" in final) {
        option.fail?.({ errMsg: final.fail, errno: 600001 } as unknown as WechatMiniprogram.RequestFailCallbackErr);
        return;
      }
      option.success?.({
        statusCode: final.statusCode,
        data: (final.data ?? "") as WechatMiniprogram.IAnyObject,
        header: final.header ?? {},
        errMsg: "request:ok",
        cookies: [],
      } as unknown as WechatMiniprogram.RequestSuccessCallbackResult);
    });
  }

  getStorageSync(key: string): unknown {
    const v = this.storage.get(key);
    return v === undefined ? "" : JSON.parse(v);
  }

  setStorageSync(key: string, data: unknown): void {
    if (this.setStorageFailure !== undefined) {
      throw new Error(this.setStorageFailure);
    }
    this.storage.set(key, JSON.stringify(data));
  }

  removeStorageSync(key: string): void {
    if (this.removeStorageFailure !== undefined) {
      throw new Error(this.removeStorageFailure);
    }
    this.storage.delete(key);
  }
}
