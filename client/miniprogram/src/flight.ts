/**
 * @file Single flight: concurrent callers of {@link SingleFlight.run} share one running
 * promise instead of each starting their own; and {@link sharedFlight}, which hands every
 * client on one storage key in a JS context the same one. No `wx`, unit-tested on its own.
 */

/** One shared in-flight operation, labelled with what it is doing. */
export class SingleFlight<T, K extends string = string> {
  private current: { kind: K; promise: Promise<T> } | undefined;

  /** What is in flight now, if anything. */
  get kind(): K | undefined {
    return this.current?.kind;
  }

  /** The in-flight promise, if any. */
  get promise(): Promise<T> | undefined {
    return this.current?.promise;
  }

  /**
   * Joins the operation in flight (whatever its kind), or starts `fn` as a new one of `kind`.
   * The slot is freed when the operation settles, so a later call starts afresh.
   */
  run(kind: K, fn: () => Promise<T>): Promise<T> {
    if (this.current) {
      return this.current.promise;
    }
    // Start on a microtask so a synchronous throw in `fn` becomes a rejection too.
    const promise: Promise<T> = Promise.resolve()
      .then(fn)
      .finally(() => {
        if (this.current?.promise === promise) {
          this.current = undefined;
        }
      });
    this.current = { kind, promise };
    return promise;
  }

  /** Changes the label of the operation in flight (a refresh that turned into a login). */
  relabel(kind: K): void {
    if (this.current) {
      this.current.kind = kind;
    }
  }
}

/**
 * Where {@link sharedFlight} keeps the flights, on the JS context's global object. `Symbol.for`
 * gives every copy of this package the same key; the version in it changes whenever what is
 * kept there stops being something an older copy can use (a `WeakMap` of storage owner → `Map`
 * of storage key → `SingleFlight` with `kind`, `promise`, `run` and `relabel`).
 */
export const SHARED_FLIGHTS_KEY = Symbol.for("weauth-miniprogram.flights.v1");

/** The flights of the clients on one storage, by storage key. */
type Flights = Map<string, SingleFlight<unknown, string>>;

// A mini-program's base library may lack `globalThis`; its own `global` is the one object
// every module of the context sees (and is writable). Declared here, in the module, for the
// `typeof` check only.
declare const global: unknown;

/** The registry when the context has no global object this module can reach or extend. */
const moduleFlights = new WeakMap<object, Flights>();

function flightRegistry(): WeakMap<object, Flights> {
  const holder: unknown =
    typeof globalThis === "object" && globalThis !== null
      ? globalThis
      : typeof global === "object" && global !== null
        ? global
        : undefined;
  if (holder === undefined) {
    return moduleFlights;
  }
  const found = (holder as Record<symbol, unknown>)[SHARED_FLIGHTS_KEY];
  if (found instanceof WeakMap) {
    return found as WeakMap<object, Flights>;
  }
  const registry = new WeakMap<object, Flights>();
  try {
    // Not enumerable, and fixed: no copy replaces the registry the others use.
    Object.defineProperty(holder, SHARED_FLIGHTS_KEY, { value: registry });
  } catch {
    return moduleFlights;
  }
  return registry;
}

/**
 * The flight of the clients that keep their tokens under `storageKey` in `storage`'s storage
 * (the `wx` object: in a mini-program the one global `wx`): the same object for every such
 * client in this JS context, whichever copy of the package created it. Copies of the package
 * (one in an independent sub-package, say) share the storage, so they must share the flight
 * too: two refreshes at once would present one refresh token twice, which the issuer takes for
 * theft. Keyed by the `wx` object as well because storage belongs to it: clients on different
 * storage (the tests' stubs, each a device) share nothing.
 *
 * This is the package's one global, against the "no globals" habit on purpose: copies share no
 * module state, only the JS context's global object (and the storage the flight protects). When
 * that object cannot be reached or extended, the flight is shared within this copy only.
 */
export function sharedFlight<T, K extends string>(storage: object, storageKey: string): SingleFlight<T, K> {
  const registry = flightRegistry();
  let flights = registry.get(storage);
  if (!flights) {
    flights = new Map();
    registry.set(storage, flights);
  }
  let flight = flights.get(storageKey);
  if (!flight) {
    flight = new SingleFlight<unknown, string>();
    flights.set(storageKey, flight);
  }
  return flight as unknown as SingleFlight<T, K>;
}
