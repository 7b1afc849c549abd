/**
 * @file The slice of the `wx` API the client uses, typed with `miniprogram-api-typings`,
 * and promise wrappers around its callback style. Thin glue: no decisions here.
 */
/// <reference types="miniprogram-api-typings" />

/** The options of `wx.pluginLogin` (inside a plugin) the client uses. */
export interface PluginLoginOption {
  success?: (res: { code?: string; errMsg?: string }) => void;
  fail?: (err: { errMsg?: string }) => void;
}

/**
 * What the client needs from `wx`. The real global `wx` satisfies it (checked at compile
 * time in `test/types/wx-compat.ts`); tests pass a stub or a shim over `fetch`.
 */
export interface WxApi {
  login(option: WechatMiniprogram.LoginOption): unknown;
  /** Only inside a mini-program plugin (see `ClientOptions.plugin`). */
  pluginLogin?(option: PluginLoginOption): unknown;
  request(option: WechatMiniprogram.RequestOption): unknown;
  getStorageSync(key: string): unknown;
  setStorageSync(key: string, data: unknown): void;
  removeStorageSync(key: string): void;
}

/** The options `request` takes: `wx.request`'s, without the callbacks. */
export type RequestOptions = Omit<WechatMiniprogram.RequestOption, "success" | "fail" | "complete">;

/** What `request` resolves to. */
export interface Response<T = unknown> {
  statusCode: number;
  data: T;
  header: Record<string, string>;
}

/**
 * The outcome of one `wx.request`: an answer, or a network failure with WeChat's errMsg (also
 * for a synchronous throw). The errMsg is for messages only: its texts vary by platform and
 * base library, and none is documented to mean the request never left the device, so a
 * failure is never taken for "nothing sent" (`refreshOutcomeUnsettled` in `protocol.ts`).
 */
export type Sent = { ok: true; response: Response } | { ok: false; errMsg: string };

/** `wx.request` as a promise that never rejects: a failure is a value. */
export function send(wx: WxApi, options: WechatMiniprogram.RequestOption): Promise<Sent> {
  return new Promise((resolve) => {
    try {
      wx.request({
        ...options,
        success: (res) =>
          resolve({
            ok: true,
            response: {
              statusCode: res.statusCode,
              data: res.data,
              header: (res.header ?? {}) as Record<string, string>,
            },
          }),
        fail: (err) => resolve({ ok: false, errMsg: err?.errMsg ?? "request:fail" }),
      });
    } catch (e) {
      resolve({ ok: false, errMsg: `request:fail ${e instanceof Error ? e.message : String(e)}` });
    }
  });
}

/**
 * How long `wx.login` and `wx.pluginLogin` may take to give a code: a login that never answers
 * must not hold the shared flight (and every request waiting for it) forever.
 */
export const WX_LOGIN_TIMEOUT_MS = 10000;

/**
 * `wx.login` as a promise of the code (rejects with WeChat's errMsg). Bounded by WeChat's own
 * `timeout` ({@link WX_LOGIN_TIMEOUT_MS}).
 */
export function wxLogin(wx: WxApi): Promise<string> {
  return new Promise((resolve, reject) => {
    try {
      wx.login({
        timeout: WX_LOGIN_TIMEOUT_MS,
        success: (res) =>
          res && typeof res.code === "string" && res.code !== ""
            ? resolve(res.code)
            : reject(new Error(`wx.login gave no code (${res?.errMsg ?? "no errMsg"})`)),
        fail: (err) => reject(new Error(err?.errMsg ?? "login:fail")),
      });
    } catch (e) {
      reject(e instanceof Error ? e : new Error(String(e)));
    }
  });
}

/**
 * `wx.pluginLogin` as a promise of its code (inside a plugin). It takes no `timeout`, so a
 * timer of our own gives it the same bound as `wx.login` ({@link WX_LOGIN_TIMEOUT_MS}); a
 * callback after it is ignored.
 */
export function wxPluginLogin(wx: WxApi): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`pluginLogin:fail timeout (no answer in ${WX_LOGIN_TIMEOUT_MS / 1000} s)`)),
      WX_LOGIN_TIMEOUT_MS,
    );
    const settle = (e: Error | undefined, code?: string): void => {
      clearTimeout(timer);
      if (e) {
        reject(e);
      } else {
        resolve(code as string);
      }
    };
    try {
      if (typeof wx.pluginLogin !== "function") {
        throw new Error("wx.pluginLogin is not available: this code is not running in a plugin");
      }
      wx.pluginLogin({
        success: (res) =>
          res && typeof res.code === "string" && res.code !== ""
            ? settle(undefined, res.code)
            : settle(new Error(`wx.pluginLogin gave no code (${res?.errMsg ?? "no errMsg"})`)),
        fail: (err) => settle(new Error(err?.errMsg ?? "pluginLogin:fail")),
      });
    } catch (e) {
      settle(e instanceof Error ? e : new Error(String(e)));
    }
  });
}
