/**
 * @file Unit tests of `src/flight.ts`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { SHARED_FLIGHTS_KEY, SingleFlight, sharedFlight } from "../../src/flight.js";

function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

test("run_concurrent_callers_one_start_same_result", async () => {
  const flight = new SingleFlight<number>();
  const gate = deferred<number>();
  let starts = 0;
  const fn = () => {
    starts++;
    return gate.promise;
  };
  const all = Promise.all([flight.run("a", fn), flight.run("a", fn), flight.run("b", fn)]);
  assert.equal(flight.kind, "a");
  gate.resolve(7);
  assert.deepEqual(await all, [7, 7, 7]);
  assert.equal(starts, 1);
});

test("run_after_settle_starts_again", async () => {
  const flight = new SingleFlight<number>();
  let starts = 0;
  assert.equal(await flight.run("a", async () => ++starts), 1);
  assert.equal(flight.kind, undefined);
  assert.equal(await flight.run("a", async () => ++starts), 2);
});

test("run_rejection_shared_and_slot_freed", async () => {
  const flight = new SingleFlight<number>();
  const gate = deferred<number>();
  const a = flight.run("a", () => gate.promise);
  const b = flight.run("a", () => Promise.resolve(1));
  gate.reject(new Error("boom"));
  await assert.rejects(a, /boom/);
  await assert.rejects(b, /boom/);
  assert.equal(flight.promise, undefined);
});

test("run_synchronous_throw_becomes_rejection", async () => {
  const flight = new SingleFlight<number>();
  await assert.rejects(
    flight.run("a", () => {
      throw new Error("sync");
    }),
    /sync/,
  );
  assert.equal(flight.kind, undefined);
});

test("relabel_in_flight_changes_kind_idle_noop", async () => {
  const flight = new SingleFlight<number, "refresh" | "login">();
  flight.relabel("login");
  assert.equal(flight.kind, undefined);
  const gate = deferred<number>();
  const p = flight.run("refresh", () => gate.promise);
  flight.relabel("login");
  assert.equal(flight.kind, "login");
  gate.resolve(1);
  await p;
});

test("sharedFlight_one_per_storage_and_key_kept_on_the_global_object", () => {
  const wx = {};
  const a = sharedFlight<number, "refresh">(wx, "flight-test.a");
  assert.ok(a instanceof SingleFlight);
  assert.equal(sharedFlight<number, "refresh">(wx, "flight-test.a"), a);
  assert.notEqual(sharedFlight<number, "refresh">(wx, "flight-test.b"), a);
  assert.notEqual(sharedFlight<number, "refresh">({}, "flight-test.a"), a, "another storage");
  // Where another copy of the package finds it (Symbol.for: the same key in every copy).
  const registry = (globalThis as unknown as Record<symbol, unknown>)[Symbol.for("weauth-miniprogram.flights.v1")];
  assert.equal(registry, (globalThis as unknown as Record<symbol, unknown>)[SHARED_FLIGHTS_KEY]);
  assert.ok(registry instanceof WeakMap);
  assert.equal(registry.get(wx)?.get("flight-test.a"), a);
  // Hidden from enumeration, and fixed: no copy replaces the registry the others use.
  const own = Object.getOwnPropertyDescriptor(globalThis, SHARED_FLIGHTS_KEY);
  assert.deepEqual([own?.enumerable, own?.writable, own?.configurable], [false, false, false]);
});

test("sharedFlight_uses_the_flight_another_copy_registered", () => {
  const wx = {};
  sharedFlight(wx, "flight-test.any"); // the registry and wx's entry exist from here on
  const registry = (globalThis as unknown as Record<symbol, WeakMap<object, Map<string, unknown>>>)[SHARED_FLIGHTS_KEY];
  const theirs = new SingleFlight<number, "refresh">();
  registry.get(wx)!.set("flight-test.theirs", theirs);
  assert.equal(sharedFlight<number, "refresh">(wx, "flight-test.theirs"), theirs);
});

test("sharedFlight_epochs_shared_and_added_to_an_older_copys_entry", () => {
  const wx = {};
  const a = sharedFlight<number, "refresh">(wx, "flight-test.epochs");
  assert.deepEqual([a.epoch, a.flightEpoch], [0, 0]);
  a.epoch++; // a logout by one client on the storage
  assert.equal(sharedFlight<number, "refresh">(wx, "flight-test.epochs").epoch, 1, "seen by every other");
  // An entry registered by a copy from before the epochs: a bare SingleFlight, given them in
  // place, so it stays the one object every copy uses.
  const registry = (globalThis as unknown as Record<symbol, WeakMap<object, Map<string, unknown>>>)[SHARED_FLIGHTS_KEY];
  const older = new SingleFlight<number, "refresh">();
  registry.get(wx)!.set("flight-test.older", older);
  const upgraded = sharedFlight<number, "refresh">(wx, "flight-test.older");
  assert.equal(upgraded, older);
  assert.deepEqual([upgraded.epoch, upgraded.flightEpoch], [0, 0]);
});
