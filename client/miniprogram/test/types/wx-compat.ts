/**
 * @file Compile-time checks (type-checked by `tsc -p tsconfig.json`, never run): the real
 * global `wx` of `miniprogram-api-typings` is a `WxApi`, and the buttons' event details are
 * accepted as they are.
 */
import type { EncryptedDetail, PhoneNumberDetail, WxApi } from "../../src/index.js";

export const realWxIsAWxApi = (): WxApi => wx;

export const phoneButtonDetailFits = (e: WechatMiniprogram.ButtonGetPhoneNumber): PhoneNumberDetail =>
  e.detail;

export const userInfoButtonDetailFits = (e: WechatMiniprogram.ButtonGetUserInfo): EncryptedDetail =>
  e.detail;

export const weRunDataFits = (r: WechatMiniprogram.GetWeRunDataSuccessCallbackResult): EncryptedDetail => r;
