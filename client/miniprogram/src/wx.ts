/**
 * @file The slice of the `wx` API the client uses, typed with `miniprogram-api-typings`,
 * and promise wrappers around its callback style. Thin glue: no decisions here.
 */
/// <reference types="miniprogram-api-typings" />

/**
 * What the client needs from `wx`. The real global `wx` satisfies it (checked at compile
 * time in `test/unit/types.test.ts`); tests pass a stub or a shim over `fetch`.
 */
/** The options of `wx.pluginLogin` (inside a plugin) the client uses. */
export interface PluginLoginOption {
  success?: (res: { code?: string; errMsg?: string }) => void;
  fail?: (err: { errMsg?: string }) => void;
}

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

/** The outcome of one `wx.request`: an answer, or a network failure with WeChat's errMsg. */
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
 * `wx.login` as a promise of the code (rejects with WeChat's errMsg). Bounded by WeChat's own
 * `timeout` (10 s here), so a login that never answers cannot hold the shared flight forever.
 */
export function wxLogin(wx: WxApi): Promise<string> {
  return new Promise((resolve, reject) => {
    try {
      wx.login({
        timeout: 10000,
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

/** `wx.pluginLogin` as a promise of its code (inside a plugin). */
export function wxPluginLogin(wx: WxApi): Promise<string> {
  return new Promise((resolve, reject) => {
    try {
      if (typeof wx.pluginLogin !== "function") {
        throw new Error("wx.pluginLogin is not available: this code is not running in a plugin");
      }
      wx.pluginLogin({
        success: (res) =>
          res && typeof res.code === "string" && res.code !== ""
            ? resolve(res.code)
            : reject(new Error(`wx.pluginLogin gave no code (${res?.errMsg ?? "no errMsg"})`)),
        fail: (err) => reject(new Error(err?.errMsg ?? "pluginLogin:fail")),
      });
    } catch (e) {
      reject(e instanceof Error ? e : new Error(String(e)));
    }
  });
}
