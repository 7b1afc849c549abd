/**
 * @file Starts the project's real stack (mock WeChat, weauth-issuer, demo upstream, Envoy
 * with the weauth filter) for the end-to-end tests, through the harness binary
 * `weauth-stack --free-ports --json` (built by `make build`), and stops it.
 *
 * The binary is `$WEAUTH_STACK_BIN` (the Makefile sets it), else, in `$CARGO_TARGET_DIR` or
 * `<repo>/target`, `x86_64-unknown-linux-musl/debug/weauth-stack` (`make build`) when it
 * exists, else `debug/weauth-stack`. It prints one JSON line with the URLs once every part
 * answers; it stops on SIGTERM and also when our end of its stdin closes (if this process
 * dies, the stack does not outlive it).
 */
import { ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import * as path from "node:path";

/** Where the stack listens, and its credentials. */
export interface StackInfo {
  envoy: string;
  admin: string;
  issuer: string;
  upstream: string;
  mock: string;
  admin_token: string;
  feed_token: string;
  dir: string;
  pid: number;
}

/** A running stack. */
export interface Stack {
  info: StackInfo;
  /** The last lines the launcher wrote to stderr (Envoy's access log among them). */
  stderrTail(): string;
  /** SIGTERM, then SIGKILL after 15 s; resolves when the launcher has exited. */
  stop(): Promise<void>;
}

const REPO = path.resolve(__dirname, "..", "..", "..", "..", "..");

function stackBinary(): string {
  if (process.env.WEAUTH_STACK_BIN) {
    return process.env.WEAUTH_STACK_BIN;
  }
  const target = process.env.CARGO_TARGET_DIR
    ? path.resolve(REPO, process.env.CARGO_TARGET_DIR)
    : path.join(REPO, "target");
  // `make build` builds for x86_64-unknown-linux-musl (the Makefile's HOST_TARGET); a plain
  // `cargo build` for the host.
  const musl = path.join(target, "x86_64-unknown-linux-musl", "debug", "weauth-stack");
  return existsSync(musl) ? musl : path.join(target, "debug", "weauth-stack");
}

/** Starts the stack with extra issuer variables and plugin patches; rejects after 90 s. */
export function startStack(issuerEnv: Record<string, string>, pluginPatches: object[] = []): Promise<Stack> {
  const bin = stackBinary();
  if (!existsSync(bin)) {
    return Promise.reject(new Error(`${bin} not found: run \`make build\` first (or set WEAUTH_STACK_BIN)`));
  }
  const args = ["--free-ports", "--json"];
  for (const [k, v] of Object.entries(issuerEnv)) {
    args.push("--issuer-env", `${k}=${v}`);
  }
  for (const patch of pluginPatches) {
    args.push("--plugin-patch", JSON.stringify(patch));
  }
  const child: ChildProcess = spawn(bin, args, { stdio: ["pipe", "pipe", "pipe"], cwd: REPO });
  let stderr = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (chunk: string) => {
    stderr = (stderr + chunk).slice(-20000);
  });
  const tail = () => stderr.split("\n").slice(-40).join("\n");
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));

  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) {
      return;
    }
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 15000);
    await exited;
    clearTimeout(timer);
    child.stdin?.destroy();
  };

  return new Promise<Stack>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => {
      void stop().then(() => reject(new Error(`weauth-stack not ready after 90 s:\n${tail()}`)));
    }, 90000);
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => {
      out += chunk;
      const nl = out.indexOf("\n");
      if (nl < 0) {
        return;
      }
      clearTimeout(timer);
      try {
        const info = JSON.parse(out.slice(0, nl)) as StackInfo;
        resolve({ info, stderrTail: tail, stop });
      } catch (e) {
        void stop().then(() => reject(new Error(`weauth-stack printed no JSON line (${String(e)}):\n${out}`)));
      }
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`weauth-stack exited (${code ?? signal}) before it was ready:\n${tail()}`));
    });
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}
