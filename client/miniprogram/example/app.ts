/**
 * @file App entry: logs in silently at launch (later requests would log in on their own
 * anyway; doing it early makes the first page's request faster).
 */
import { weauth } from "./utils/weauth";

App({
  onLaunch() {
    if (!weauth.isLoggedIn()) {
      weauth.login().catch((e: Error) => console.warn("weauth login failed:", e.message));
    }
  },
});
