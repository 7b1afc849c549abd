#!/usr/bin/env python3
"""Regenerates the test vectors in this folder with tools independent of the crate under test.

AES-128-CBC + PKCS#7 comes from the `openssl enc` command line, SHA-1 from `openssl dgst -sha1`
and HMAC-SHA256 from `openssl dgst -sha256 -hmac`; every digest is cross-checked against
Python's standard `hashlib`/`hmac`, and every ciphertext is decrypted back with `openssl enc -d`.
Python's standard library only assembles the JSON. Keys and ivs are fixed, so a re-run
reproduces the files byte for byte (see README.md).

Usage: python3 generate.py   (from any directory; writes next to this script)
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
APPID = "wx0123456789abcdef"
OTHER_APPID = "wxfedcba9876543210"
NOW = 1_700_000_000


def openssl(args, data):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def aes_encrypt(key, iv, plaintext):
    ct = openssl(["enc", "-aes-128-cbc", "-K", key.hex(), "-iv", iv.hex()], plaintext)
    back = openssl(["enc", "-d", "-aes-128-cbc", "-K", key.hex(), "-iv", iv.hex()], ct)
    assert back == plaintext
    return ct


def aes_decrypt(key, iv, ciphertext):
    return openssl(["enc", "-d", "-aes-128-cbc", "-K", key.hex(), "-iv", iv.hex()], ciphertext)


def sha1_hex(data):
    out = openssl(["dgst", "-sha1", "-r"], data).split()[0].decode()
    assert out == hashlib.sha1(data).hexdigest()
    return out


def hmac_sha256_hex(key, data):
    out = openssl(["dgst", "-sha256", "-r", "-hmac", key], data).split()[0].decode()
    assert out == hmac.new(key.encode(), data, hashlib.sha256).hexdigest()
    return out


def b64(data):
    return base64.b64encode(data).decode()


def fixed(seed):
    """16 fixed bytes derived from a label: a deterministic key or iv."""
    return hashlib.sha256(seed.encode()).digest()[:16]


def compact(obj):
    # Sorted keys, no spaces, raw UTF-8: the text serde_json writes for the same object.
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def write(name, obj):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def user_payload(nick):
    return {
        "avatarUrl": "https://example.invalid/avatar/0",
        "city": "Guangzhou",
        "country": "CN",
        "gender": 1,
        "language": "zh_CN",
        "nickName": nick,
        "openId": "oTestOpenId0000000000000000",
        "province": "Guangdong",
    }


def with_watermark(payload, appid, timestamp):
    out = dict(payload)
    out["watermark"] = {"appid": appid, "timestamp": timestamp}
    return out


def aes_case(name, key, iv, plaintext_text, **expect):
    ct = aes_encrypt(key, iv, plaintext_text.encode())
    case = {
        "name": name,
        "session_key": b64(key),
        "iv": b64(iv),
        "encrypted_data": b64(ct),
        "plaintext": plaintext_text,
    }
    case.update(expect)
    return case


def aes_cases():
    key = fixed("wxdata key A")
    other_key = fixed("wxdata key B (a later wx.login)")
    iv = fixed("wxdata iv 1")
    cases = []

    user = user_payload("微信用户 Band")
    cases.append(aes_case(
        "user_info_ok", key, iv, compact(with_watermark(user, APPID, NOW - 10)),
        appid=APPID, now=NOW, max_age=60, expect="ok",
        encrypt_payload=user, watermark_timestamp=NOW - 10))

    # Pad the nickname until the plaintext is a whole number of blocks, so PKCS#7 adds a full
    # block of 0x10 bytes.
    nick = "B"
    while len(compact(with_watermark(user_payload(nick), APPID, NOW)).encode()) % 16:
        nick += "B"
    full = user_payload(nick)
    text = compact(with_watermark(full, APPID, NOW))
    assert len(text.encode()) % 16 == 0
    cases.append(aes_case(
        "full_padding_block_ok", key, iv, text,
        appid=APPID, now=NOW, max_age=None, expect="ok",
        encrypt_payload=full, watermark_timestamp=NOW))

    phone = {"countryCode": "86", "phoneNumber": "13800000000", "purePhoneNumber": "13800000000"}
    cases.append(aes_case(
        "phone_number_ok", key, fixed("wxdata iv 2"), compact(with_watermark(phone, APPID, NOW)),
        appid=APPID, now=NOW, max_age=0, expect="ok",
        encrypt_payload=phone, watermark_timestamp=NOW))

    wrong = aes_case(
        "encrypted_under_newer_session_key", other_key, iv,
        compact(with_watermark(user, APPID, NOW)),
        appid=APPID, now=NOW, max_age=None, expect="session_key_mismatch")
    wrong["session_key"] = b64(key)  # decrypted with the old key the issuer still holds
    wrong["note"] = "encrypted with key B, decrypted with session_key = key A"
    cases.append(wrong)

    cases.append(aes_case(
        "other_app", key, iv, compact(with_watermark(user, OTHER_APPID, NOW)),
        appid=APPID, now=NOW, max_age=None, expect="watermark_appid_mismatch"))

    cases.append(aes_case(
        "stale_watermark", key, iv, compact(with_watermark(user, APPID, NOW - 301)),
        appid=APPID, now=NOW, max_age=300, expect="watermark_expired"))

    cases.append(aes_case(
        "not_json", key, iv, "this is not JSON at all",
        appid=APPID, now=NOW, max_age=None, expect="not_json"))

    cases.append(aes_case(
        "no_watermark", key, iv, compact(user),
        appid=APPID, now=NOW, max_age=None, expect="watermark_missing"))

    # A ciphertext whose base64 contains '+', sent with every '+' turned into a space. The iv is
    # varied deterministically until the base64 has a '+'.
    n = 0
    while True:
        plus_iv = fixed(f"wxdata plus iv {n}")
        case = aes_case(
            "plus_became_space", key, plus_iv, compact(with_watermark(phone, APPID, NOW)),
            appid=APPID, now=NOW, max_age=None, expect="invalid_base64",
            plus_became_space=True)
        if "+" in case["encrypted_data"]:
            break
        n += 1
    case["encrypted_data"] = case["encrypted_data"].replace("+", " ")
    cases.append(case)

    truncated = aes_case(
        "truncated", key, iv, compact(with_watermark(phone, APPID, NOW)),
        appid=APPID, now=NOW, max_age=None, expect="invalid_encrypted_data_length")
    truncated["encrypted_data"] = b64(base64.b64decode(truncated["encrypted_data"])[:-1])
    cases.append(truncated)

    for case in cases:
        if "encrypt_payload" in case:
            assert compact(with_watermark(case["encrypt_payload"], case["appid"],
                                          case["watermark_timestamp"])) == case["plaintext"]
    return cases


def wechat_sample():
    # WeChat's own decryptData demo (the "WXBizDataCrypt" sample shipped with the mini-program
    # documentation in every language), reproduced in many public repositories.
    session_key = "tiihtNczf5v6AKRyjwEUhQ=="
    iv = "r7BXXKkLb8qrSNn05n0qiA=="
    data = (
        "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC"
        "+oNPdbB+3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poO"
        "FtnEtpyxVLW1zAo6/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8"
        "xz+W//FRAUid1OksQaQx4CMs8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB"
        "6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJd"
        "NiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOy"
        "uxINew=="
    )
    plaintext = aes_decrypt(base64.b64decode(session_key), base64.b64decode(iv),
                            base64.b64decode(data)).decode()
    assert json.loads(plaintext)["watermark"]["appid"] == "wx4f4bc4dec97d474b"
    decrypt = {
        "source": "WeChat mini-program documentation, decryptData demo (WXBizDataCrypt)",
        "appid": "wx4f4bc4dec97d474b",
        "session_key": session_key,
        "iv": iv,
        "encrypted_data": data,
        "plaintext": plaintext,
    }
    # A rawData signature published as an example in a public Go WeChat SDK's README.
    raw = ('{"nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou",'
           '"province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/'
           '1vZvI39NWFQ9XM4LtQpFrQJ1xlgZxx3w7bQxKARol6503Iuswjjn6nIGBiaycAjAtpujxyzYsrztuuICqIM5'
           'ibXQ/0"}')
    sig_key = "HyVFkGl5F5OQWJZZaNzBBg=="
    published_sig = "75e81ceda165f4ffa64f4068af58c64b8f54b88c"
    assert sha1_hex((raw + sig_key).encode()) == published_sig
    signature = {
        "source": "example in a public Go WeChat SDK README; rechecked with openssl dgst -sha1",
        "raw_data": raw,
        "session_key": sig_key,
        "signature": published_sig,
    }
    return {"decrypt": decrypt, "raw_data_signature": signature}


def raw_data_cases():
    cases = []
    for raw, key in [
        ('{"nickName":"Band","gender":1}', "HyVFkGl5F5OQWJZZaNzBBg=="),
        ('{"nickName":"微信用户","avatarUrl":"https://example.invalid/a/0"}', b64(fixed("wxdata key A"))),
        ("", b64(fixed("wxdata key B (a later wx.login)"))),
    ]:
        cases.append({
            "raw_data": raw,
            "session_key": key,
            "signature": sha1_hex((raw + key).encode()),
        })
    return cases


def checksession_cases():
    cases = []
    for key in [
        "tiihtNczf5v6AKRyjwEUhQ==",
        b64(fixed("wxdata key A")),
        b64(fixed("wxdata key B (a later wx.login)")),
        "K" * 100,  # longer than the 64-byte HMAC block: hashed first (RFC 2104)
    ]:
        cases.append({"session_key": key, "signature": hmac_sha256_hex(key, b"")})
    return cases


def main():
    write("aes_cbc.json", {"cases": aes_cases()})
    write("wechat_published.json", wechat_sample())
    write("raw_data_signature.json", {"cases": raw_data_cases()})
    write("checksession.json", {"cases": checksession_cases()})


if __name__ == "__main__":
    main()
