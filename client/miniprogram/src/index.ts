/**
 * @file weauth-miniprogram: the WeChat mini-program client of weauth.
 *
 * `createClient({ baseUrl })` gives `login`, `request`, `logout`, `getPhoneNumber` and
 * `decrypt`. Modules: `client.ts` (glue over `wx`), `protocol.ts` (pure rules), `flight.ts`
 * (single flight), `wx.ts` (the typed slice of `wx`), `errors.ts` (`WeauthError`).
 */
/// <reference types="miniprogram-api-typings" />
export { createClient } from "./client.js";
export type {
  ClientOptions,
  Decrypted,
  EncryptedDetail,
  PhoneNumber,
  PhoneNumberDetail,
  WeauthClient,
} from "./client.js";
export { WeauthError } from "./errors.js";
export type { WeauthErrorCode } from "./errors.js";
export type { RetryPolicy, TokenPair } from "./protocol.js";
export type { RequestOptions, Response, WxApi } from "./wx.js";
