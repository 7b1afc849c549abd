/**
 * @file The app's one weauth client: every page imports it, so every request shares the
 * same tokens and the same single-flight refresh.
 */
import { createClient } from "weauth-miniprogram";

export const weauth = createClient({ baseUrl: "https://api.example.com" });
