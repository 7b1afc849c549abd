#!/usr/bin/env python3
"""Checks the OCI image layouts `make image` wrote (part of `make test`; stdlib only).

- image_filter_layer_holds_exactly_the_wasm_module: target/oci/weauth-filter has one layer,
  gzip-compressed (Istio's compat variant), annotated `module.wasm.image/variant=compat`,
  holding exactly one file, `plugin.wasm`, byte-equal to the module `make wasm` built.
- image_native_filter_layer_holds_exactly_the_module: target/oci/weauth-filter-native has one
  layer holding exactly one file, `lib/libweauth_filter.so`, byte-equal to the native module the
  image was built from (WEAUTH_IMAGE_NATIVE), no entrypoint (it is mounted, never run), and
  labels naming the Envoy version and dynamic-module ABI it was built for (the Makefile's
  ENVOY_VERSION, the module's ABI_VERSION).
- image_issuer_entrypoint_unpacked_answers_healthz: target/oci/weauth-issuer unpacked into a
  root filesystem; its user is not root, it carries the CA certificates, and its entrypoint,
  run inside that root filesystem (chroot: nothing from the host), answers GET /healthz.

Prints `N passed, N failed` and exits non-zero on a failure.
"""
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCI = os.path.join(ROOT, "target", "oci")
WASM = os.environ.get("WEAUTH_FILTER_WASM") or os.path.join(
    ROOT, "target", "wasm32-wasip1", "wasm-release", "weauth_filter.wasm")
NATIVE = os.environ.get("WEAUTH_IMAGE_NATIVE") or os.path.join(
    ROOT, "target", "native", "libweauth_filter.so")


def blob(layout, digest):
    algo, hexdigest = digest.split(":", 1)
    path = os.path.join(layout, "blobs", algo, hexdigest)
    with open(path, "rb") as f:
        data = f.read()
    assert hashlib.sha256(data).hexdigest() == hexdigest, f"blob {digest} does not match its digest"
    return data, path


def manifest(name):
    layout = os.path.join(OCI, name)
    with open(os.path.join(layout, "oci-layout")) as f:
        assert json.load(f)["imageLayoutVersion"] == "1.0.0"
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    assert len(index["manifests"]) == 1, f"{name}: one image expected in index.json"
    desc = index["manifests"][0]
    with open(os.path.join(OCI, f"{name}.digest")) as f:
        printed = f.read().strip()
    assert desc["digest"] == printed, f"{name}: index digest {desc['digest']} != printed {printed}"
    data, _ = blob(layout, desc["digest"])
    doc = json.loads(data)
    config = json.loads(blob(layout, doc["config"]["digest"])[0])
    return layout, doc, config


def single_file_layer(doc, layout, name, built_path):
    """The image's one gzip layer holds exactly `name`, byte-equal to the file at `built_path`."""
    layers = doc["layers"]
    assert len(layers) == 1, f"one layer expected, got {len(layers)}"
    assert layers[0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip", layers[0]["mediaType"]
    _, path = blob(layout, layers[0]["digest"])
    with tarfile.open(path, "r:gz") as tar:
        files = [m for m in tar.getmembers() if not m.isdir()]
        names = [m.name.lstrip("./") for m in files]
        assert names == [name], f"the layer must hold exactly {name}, holds {names}"
        data = tar.extractfile(files[0]).read()
    with open(built_path, "rb") as f:
        built = f.read()
    assert data == built, f"{name} ({len(data)} bytes) differs from {built_path} ({len(built)} bytes)"


def image_filter_layer_holds_exactly_the_wasm_module():
    layout, doc, _ = manifest("weauth-filter")
    assert doc.get("annotations", {}).get("module.wasm.image/variant") == "compat", doc.get("annotations")
    single_file_layer(doc, layout, "plugin.wasm", WASM)


def built_for():
    """The Envoy version the Makefile installs and the dynamic-module ABI the module names."""
    with open(os.path.join(ROOT, "Makefile")) as f:
        envoy = re.search(r"^ENVOY_VERSION := (\S+)$", f.read(), re.M).group(1)
    with open(os.path.join(ROOT, "filter", "src", "native", "ffi.rs")) as f:
        abi = re.search(r'pub const ABI_VERSION: &\[u8\] = b"([^"\\]+)\\0";', f.read()).group(1)
    return envoy, abi


def image_native_filter_layer_holds_exactly_the_module():
    layout, doc, config = manifest("weauth-filter-native")
    single_file_layer(doc, layout, "lib/libweauth_filter.so", NATIVE)
    assert not config.get("config", {}).get("Entrypoint"), "the native image is mounted, not run"
    # The Envoy it was built for, for a deployment to check against its proxy (the module
    # loads into that Envoy minor only).
    envoy, abi = built_for()
    labels = config.get("config", {}).get("Labels") or {}
    want = {"io.weauth.envoy.version": envoy, "io.weauth.envoy.dynamic-module-abi": abi}
    got = {name: labels.get(name) for name in want}
    assert got == want, f"the native image's labels {got} are not {want}"


# The issuer binds WEAUTH_LISTEN=127.0.0.1:0 itself and logs the address it got (text or JSON
# log format alike): no port is picked here and released for the issuer to bind later, when
# another process may have taken it.
LISTENING = re.compile(r"listening on (127\.0\.0\.1:\d+)")
# The check runs at nice 19 beside `make test`'s builds and test streams on a 2-core machine:
# the unoptimized issuer can take long to start there.
HEALTHZ_DEADLINE_S = 120


def wait_healthz(proc, log_path, deadline_s=HEALTHZ_DEADLINE_S):
    """Waits until the issuer `proc` (logging to `log_path`) has logged its address and answers
    GET /healthz there with 200 {"status": "ok"}; returns the address."""

    def log_text():
        # Read through a file of our own: the child's stdout shares the offset of the one it
        # was given.
        with open(log_path, errors="replace") as f:
            return f.read()

    deadline = time.monotonic() + deadline_s
    addr = None
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the issuer exited ({proc.returncode}):\n{log_text()}")
        if addr is None:
            found = LISTENING.search(log_text())
            addr = found.group(1) if found else None
        if addr is not None:
            try:
                with urllib.request.urlopen(f"http://{addr}/healthz", timeout=2) as r:
                    body = json.loads(r.read())
                    assert r.status == 200 and body == {"status": "ok"}, (r.status, body)
                    return addr
            except OSError:
                pass
        if time.monotonic() > deadline:
            where = f"listening on {addr}" if addr else "no 'listening on' line"
            raise AssertionError(f"no answer on /healthz within {deadline_s} s ({where}):\n{log_text()}")
        time.sleep(0.1)


def image_issuer_entrypoint_unpacked_answers_healthz():
    layout, doc, config = manifest("weauth-issuer")
    cfg = config["config"]
    user = cfg.get("User", "")
    assert user and user.split(":")[0] not in ("", "0", "root"), f"image user must not be root: {user!r}"
    entrypoint = cfg["Entrypoint"]
    with tempfile.TemporaryDirectory(prefix="weauth-image-") as tmp:
        rootfs = os.path.join(tmp, "rootfs")
        os.makedirs(rootfs)
        for layer in doc["layers"]:
            _, path = blob(layout, layer["digest"])
            with tarfile.open(path, "r:*") as tar:
                if hasattr(tarfile, "tar_filter"):
                    tar.extractall(rootfs, filter="tar")
                else:  # Python before 3.11.4 has no extraction filters
                    tar.extractall(rootfs)
        assert os.path.getsize(os.path.join(rootfs, "etc/ssl/certs/ca-certificates.crt")) > 0
        os.makedirs(os.path.join(rootfs, "tmp"), mode=0o1777, exist_ok=True)
        os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
        env = {k: v for k, v in (e.split("=", 1) for e in cfg.get("Env", []))}
        env.update({
            "WEAUTH_LISTEN": "127.0.0.1:0",
            "WEAUTH_STORE": "sqlite:///tmp/weauth.db",
            "WEAUTH_WECHAT_APPID": "wx0123456789abcdef",
            "WEAUTH_WECHAT_SECRET": "image-check-secret",
            "WEAUTH_DATA_KEY": base64.b64encode(os.urandom(32)).decode(),
        })
        uid, _, gid = user.partition(":")
        if os.geteuid() == 0:
            cmd = ["chroot", f"--userspec={uid}:{gid or uid}", rootfs] + entrypoint
        else:
            # Unprivileged: a user namespace lets us chroot (the image runs as "root" of it).
            cmd = ["unshare", "--user", "--map-root-user", "chroot", rootfs] + entrypoint
        log_path = os.path.join(tmp, "issuer.log")
        log = open(log_path, "w")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=tmp)
        try:
            wait_healthz(proc, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def main():
    passed = failed = 0
    for test in (image_filter_layer_holds_exactly_the_wasm_module,
                 image_native_filter_layer_holds_exactly_the_module,
                 image_issuer_entrypoint_unpacked_answers_healthz):
        try:
            test()
            print(f"test {test.__name__} ... ok")
            passed += 1
        except Exception as err:  # noqa: BLE001 - report every failure, then exit non-zero
            print(f"test {test.__name__} ... FAILED: {err}")
            failed += 1
    print(f"images: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
