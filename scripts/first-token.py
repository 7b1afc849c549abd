#!/usr/bin/env python3
"""Envoy start → the first valid token answered 200, for wasm modules side by side (issue 22 §5).

Usage, from the workspace root after `make build` (for target/debug/weauth-stack, or
WEAUTH_STACK_BIN), `make wasm` and `make setup` (.tools/bin/envoy, or WEAUTH_ENVOY_BIN);
`make bench` runs it on the modules of its rows and appends the result to results.md:

    scripts/first-token.py ROUNDS NAME=MODULE.wasm [NAME=MODULE.wasm ...]

e.g. `weauth=target/wasm32-wasip1/wasm-release/weauth_filter.wasm
empty=target/wasm32-wasip1/wasm-release/weauth_empty_filter.wasm` (`cargo build -p
weauth-empty-filter --target wasm32-wasip1 --profile wasm-release`: the baseline).

Starts `weauth-stack --free-ports --json` (issuer, mock WeChat, upstream and an Envoy of its
own), logs in once for a token, then, per round and per module, starts ANOTHER Envoy with the
stack's rendered bootstrap (envoy/envoy.yaml, the shipped plugin configuration; `--concurrency
1`), fresh ports and that module, and times its spawn → the first `GET /api/__weauth_ready`
with the token answered 200 (polled every 5 ms on fresh connections). Modules take turns, one
Envoy at a time. Per start it prints the wall time, Envoy's CPU time until then (steadier than
wall time on a shared machine) and, from Envoy's info log, when the listeners were loaded, the
first VM was configured (V8 has compiled the module), workers started, a VM became the
fetcher and the worker loaded the keys (seconds after spawn). Logs: /tmp/first-token-*.log.
An empty filter never logs "configured" nor fetches: its last mark is "workers".
"""
import json, os, re, signal, socket, statistics, subprocess, sys, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY = os.environ.get("WEAUTH_ENVOY_BIN") or os.path.join(ROOT, ".tools/bin/envoy")
STACK = os.environ.get("WEAUTH_STACK_BIN") or os.path.join(ROOT, "target/debug/weauth-stack")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(url, token=None, timeout=2):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception:
        return 0, b""


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def main():
    rounds = int(sys.argv[1])
    modules = [(name, os.path.abspath(path)) for name, path in (a.split("=", 1) for a in sys.argv[2:])]
    stack = subprocess.Popen([STACK, "--free-ports", "--json"],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(stack.stdout.readline())
        code = json.loads(get(info["mock"] + "/mock/login?user=firsttoken")[1])["code"]
        token = post(info["issuer"] + "/v1/login", {"code": code})["access_token"]
        base = open(os.path.join(info["dir"], "envoy.yaml")).read()
        old_ports = [int(info[k].rsplit(":", 1)[1]) for k in ("envoy", "internal", "admin")]
        wasm_paths = set(re.findall(r'filename: *"([^"]+\.wasm)"', base))
        assert len(wasm_paths) == 1, wasm_paths
        (weauth_wasm,) = wasm_paths
        times = {name: [] for name, _ in modules}
        cpus = {}
        for r in range(rounds):
            for name, wasm in modules:
                ports = [free_port() for _ in old_ports]
                cfg = base.replace(weauth_wasm, wasm)
                for old, new in zip(old_ports, ports):
                    cfg = re.sub(r"port_value: %d\b" % old, "port_value: %d" % new, cfg)
                path = os.path.join(info["dir"], "first-token.yaml")
                open(path, "w").write(cfg)
                log = open("/tmp/first-token-%s-%d.log" % (name, r), "w")
                env = dict(os.environ, WEAUTH_FEED_TOKEN=info.get("feed_token", ""))
                t0 = time.monotonic()
                w0 = time.time()
                envoy = subprocess.Popen([ENVOY, "-c", path, "--concurrency", "1",
                                          "--disable-hot-restart", "--log-level", "info"],
                                         stdout=log, stderr=log, env=env)
                url = "http://127.0.0.1:%d/api/__weauth_ready" % ports[0]
                while True:
                    status, _ = get(url, token, timeout=1)
                    if status == 200:
                        break
                    if time.monotonic() - t0 > 30:
                        envoy.kill()
                        raise SystemExit("%s: no 200 in 30 s (last %s)" % (name, status))
                    time.sleep(0.005)
                t = time.monotonic() - t0
                st = open("/proc/%d/stat" % envoy.pid).read().rsplit(")", 1)[1].split()
                cpu = (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
                times[name].append(t)
                cpus.setdefault(name, []).append(cpu)
                log.flush()
                marks = []
                for line in open(log.name):
                    for key, label in (("loading 2 listener", "listeners"), ("configured:", "vm-configured"),
                                       ("starting workers", "workers"), ("now the JWKS", "fetcher"),
                                       ("loaded:", "keys-in-worker")):
                        if key in line and label not in [m[0] for m in marks]:
                            ts = line[1:24]
                            tt = time.mktime(time.strptime(ts[:19], "%Y-%m-%d %H:%M:%S")) + float(ts[19:])
                            marks.append((label, tt - w0))
                print("round %d %-8s %.3f s (cpu %.2f s) %s" % (r + 1, name, t, cpu,
                      " ".join("%s=%.3f" % m for m in marks)), flush=True)
                envoy.send_signal(signal.SIGTERM)
                envoy.wait(timeout=10)
                log.close()
        for name, ts in times.items():
            print("%-8s median %.3f s  min %.3f  max %.3f  (n=%d); Envoy CPU until then: median %.2f s" % (
                name, statistics.median(ts), min(ts), max(ts), len(ts), statistics.median(cpus[name])))
    finally:
        stack.stdin.close()
        stack.terminate()
        stack.wait(timeout=20)


main()
