/**
 * @file A `wx` for Node whose `request` is real HTTP (`fetch`) and whose `login` returns a
 * real one-time code from the mock WeChat (`GET /mock/login?user=NAME`, the stand-in for
 * the WeChat app handing `wx.login` a code). It behaves like `wx.request` where the client
 * relies on it: an object body is sent as JSON (GET: as the query), the answer's JSON is
 * parsed (text kept when it is not JSON), any HTTP status is `success`, and only a failure
 * to get an answer is `fail` with `errMsg` `request:fail …`.
 *
 * It counts what it sends, and fault hooks make a request fail for real: `refuse` sends it
 * to a closed loopback port (connection refused), `lose-answer` sends it to the stack and
 * then reports a failure as if the connection broke before the answer arrived.
 */
import { createServer } from "node:net";
import type { WxApi } from "../../src/wx.js";

/** What a fault hook may do to a request. */
export type Fault = "refuse" | "lose-answer" | undefined;

/** A loopback port nothing listens on (bound, then released). */
export function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function toQuery(data: Record<string, unknown>): string {
  return Object.entries(data)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
    .join("&");
}

export class FetchWx implements WxApi {
  readonly storage = new Map<string, string>();
  /** `METHOD path` → requests actually sent (a refused one counts: it was attempted). */
  readonly sent = new Map<string, number>();
  wxLogins = 0;
  /** Consulted in order for each request; the first non-undefined answer applies. */
  readonly faults: Array<(method: string, path: string) => Fault> = [];

  constructor(
    private readonly mockUrl: string,
    readonly user: string,
    private readonly deadPort: number,
  ) {}

  count(method: string, path: string): number {
    return this.sent.get(`${method} ${path}`) ?? 0;
  }

  login(option: WechatMiniprogram.LoginOption): void {
    this.wxLogins++;
    fetch(`${this.mockUrl}/mock/login?user=${encodeURIComponent(this.user)}`)
      .then(async (res) => {
        const body = (await res.json()) as { code?: string };
        if (!res.ok || typeof body.code !== "string") {
          throw new Error(`mock login answered ${res.status}`);
        }
        option.success?.({ code: body.code, errMsg: "login:ok" });
      })
      .catch((e: unknown) =>
        option.fail?.({ errMsg: `login:fail ${e instanceof Error ? e.message : String(e)}`, errno: 1 }),
      );
  }

  request(option: WechatMiniprogram.RequestOption): void {
    const method = (option.method ?? "GET").toUpperCase();
    let url = option.url;
    const header: Record<string, string> = {};
    for (const [k, v] of Object.entries(option.header ?? {})) {
      header[k.toLowerCase()] = String(v);
    }
    let body: string | undefined;
    const data = option.data;
    if (method === "GET" && data && typeof data === "object" && !(data instanceof ArrayBuffer)) {
      const q = toQuery(data as Record<string, unknown>);
      url += q ? (url.includes("?") ? "&" : "?") + q : "";
    } else if (typeof data === "string") {
      body = data;
    } else if (data !== undefined && !(data instanceof ArrayBuffer)) {
      body = JSON.stringify(data);
      header["content-type"] ??= "application/json";
    }
    const pathOnly = new URL(url).pathname;
    this.sent.set(`${method} ${pathOnly}`, this.count(method, pathOnly) + 1);
    let fault: Fault;
    for (const hook of this.faults) {
      fault = hook(method, pathOnly);
      if (fault) {
        break;
      }
    }
    if (fault === "refuse") {
      const u = new URL(url);
      u.host = `127.0.0.1:${this.deadPort}`;
      url = u.toString();
    }
    const fail = (e: unknown) =>
      option.fail?.({
        errMsg: `request:fail ${e instanceof Error ? (e.cause instanceof Error ? e.cause.message : e.message) : String(e)}`,
        errno: 600001,
      } as unknown as WechatMiniprogram.RequestFailCallbackErr);
    fetch(url, { method, headers: header, body, signal: AbortSignal.timeout(option.timeout ?? 30000) })
      .then(async (res) => {
        const text = await res.text();
        if (fault === "lose-answer") {
          fail(new Error("connection reset before the answer (injected)"));
          return;
        }
        let parsed: unknown = text;
        if ((option.dataType ?? "json") === "json") {
          try {
            parsed = JSON.parse(text);
          } catch {
            parsed = text;
          }
        }
        const headers: Record<string, string> = {};
        res.headers.forEach((v, k) => {
          headers[k] = v;
        });
        option.success?.({
          statusCode: res.status,
          data: parsed as WechatMiniprogram.IAnyObject,
          header: headers,
          errMsg: "request:ok",
          cookies: [],
        } as unknown as WechatMiniprogram.RequestSuccessCallbackResult);
      })
      .catch(fail);
  }

  getStorageSync(key: string): unknown {
    const v = this.storage.get(key);
    return v === undefined ? "" : JSON.parse(v);
  }

  setStorageSync(key: string, data: unknown): void {
    this.storage.set(key, JSON.stringify(data));
  }

  removeStorageSync(key: string): void {
    this.storage.delete(key);
  }
}
