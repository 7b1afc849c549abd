/**
 * @file The example page: a protected API call, the phone-number button, logout.
 */
import { WeauthError } from "weauth-miniprogram";
import { weauth } from "../../utils/weauth";

interface Hello {
  headers: Record<string, string>;
}

Page({
  data: { hello: "", phone: "", error: "" },

  async onLoad() {
    try {
      // Logs in if needed; an expired token is refreshed once for all pending requests.
      const res = await weauth.request<Hello>({ url: "/api/hello" });
      this.setData({ hello: res.statusCode === 200 ? `hello, ${res.data.headers["x-weauth-sub"]}` : `HTTP ${res.statusCode}` });
    } catch (e) {
      this.setData({ error: e instanceof WeauthError ? e.code : String(e) });
    }
  },

  async onGetPhoneNumber(e: WechatMiniprogram.ButtonGetPhoneNumber) {
    try {
      const phone = await weauth.getPhoneNumber(e.detail);
      this.setData({ phone: phone.purePhoneNumber });
    } catch (err) {
      // `user_denied` when the user tapped "deny"; `request_failed` with the issuer's code.
      this.setData({ error: err instanceof WeauthError ? err.code : String(err) });
    }
  },

  async onLogout() {
    await weauth.logout();
    this.setData({ hello: "", phone: "" });
  },
});
