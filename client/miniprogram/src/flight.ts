/**
 * @file Single flight: concurrent callers of {@link SingleFlight.run} share one running
 * promise instead of each starting their own; and {@link sharedFlight}, which hands every
 * client on one storage key in a JS context the same one, with the logout epoch they share.
 * No `wx`, unit-tested on its own.
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
 * What the clients on one storage share besides the operation in flight: the logout epoch.
 * Plain numbers on the flight's own object (see {@link SharedFlight}), managed by the clients.
 */
export interface Epochs {
  /**
   * Logouts on this storage so far, by any client on it (whichever copy of the package):
   * work begun in an earlier epoch (a refresh, a login, a request waiting for either) keeps
   * nothing it gets and rejects.
   */
  epoch: number;
  /** The epoch the operation in flight (or the last one) started in; set by whoever starts one. */
  flightEpoch: number;
}

/**
 * The refresh token the last refresh on a storage presented, as the clients on it (copies of
 * the package included) must all know it: they share the token, and the issuer's reuse grace
 * for it runs from its rotation, which an attempt whose outcome is unsettled (no answer, a
 * 5xx that is not the issuer's own 503, a 200 without a pair: `refreshOutcomeUnsettled` in
 * `protocol.ts`) may have made unseen. After such an attempt the token may be presented again
 * only until `refreshPresentableUntil(unsettledAt, grace)`, by whichever client refreshes
 * next; after that a second presentation would be taken for a theft and revoke the session.
 */
export interface Presented {
  /** The refresh token. */
  refreshToken: string;
  /**
   * When it was first presented (device time, ms; the presenting client's `now`). Not the
   * start of the grace window any more (`unsettledAt` is): kept for copies of the package
   * from before `unsettledAt`, which count the window from it — sooner, so never too late.
   */
  firstAt: number;
  /**
   * An attempt that presented it ended without saying what the issuer did — no answer, a 5xx
   * that is not the issuer's own 503, a 200 without a pair — so the issuer may have rotated it
   * then.
   */
  unsettled: boolean;
  /**
   * When the first attempt that left it unsettled was sent (device time, ms): a rotation came
   * no sooner, and the grace window runs from it. Attempts answered with a settled refusal
   * before it (a 429, the issuer's 503) rotated nothing and do not count. Absent while
   * `unsettled` is false, and when a copy from before it set `unsettled`: `firstAt` then.
   */
  unsettledAt?: number;
}

/** What a {@link SharedFlight} keeps of the refresh token presented last. */
export interface Presentations {
  /** The refresh token the last refresh presented (none yet: undefined). Set by the clients. */
  presented?: Presented;
}

/**
 * The hold on the logins the clients on a storage start by themselves (a `request()`'s, or
 * the login a refresh turns into) after the issuer refused a login (or a refresh) for a ban or
 * for the user's risk: an answer about the user, who is the same for every client on the
 * storage. Until device time `until` (at most `capMs` from when it was set) such a login
 * fails at once with `statusCode` and `error`.
 */
export interface LoginHold {
  until: number;
  capMs: number;
  statusCode: number;
  error: string;
}

/** What a {@link SharedFlight} keeps of the logins' hold. */
export interface LoginHolds {
  /**
   * The hold in force (none: undefined). Set and cleared by the clients: the one whose login
   * or refresh is refused sets it, and any one's login that succeeds ends it. Kept here so
   * that a login run in a flight another client started (a refresh it joined that turns into
   * a login) heeds it as that client's own would.
   */
  loginHold?: LoginHold;
}

/**
 * What the issuer asked not to be asked again before a time: the `Retry-After` of a transient
 * answer (a 429, a 503) to a login or a refresh that the flight gave up on (longer than its
 * retries wait, or on its last attempt). Until device time `until` (at most `capMs` from when
 * it was set) a login (or a refresh) fails at once with `statusCode` and `error`.
 */
export interface RetryAfterHold {
  until: number;
  capMs: number;
  statusCode: number;
  error?: string;
}

/** What a {@link SharedFlight} keeps of the issuer's `Retry-After`s, by the kind of flight. */
export interface RetryAfterHolds<K extends string = string> {
  /**
   * The hold in force for the flights of each kind (none: absent or undefined). Set by the
   * clients: the one whose login or refresh gave up on a `Retry-After` sets it for that kind;
   * it ends when its time has passed. Kept here so that every client on the storage heeds it:
   * the issuer asked the device, not one client, and a login or refresh run in a flight
   * another client started (a refresh it joined that turns into a login, say) must heed it
   * as that client's own would.
   */
  retryAfterHolds?: { [kind in K]?: RetryAfterHold };
}

/**
 * A {@link SingleFlight} as {@link sharedFlight} hands it out: the flight, its {@link Epochs},
 * the refresh token presented last ({@link Presentations}), the logins' hold
 * ({@link LoginHolds}) and the issuer's `Retry-After` holds ({@link RetryAfterHolds}).
 */
export type SharedFlight<T, K extends string = string> = SingleFlight<T, K> &
  Epochs &
  Presentations &
  LoginHolds &
  RetryAfterHolds<K>;

/**
 * Where {@link sharedFlight} keeps the flights, on the JS context's global object. `Symbol.for`
 * gives every copy of this package the same key; the version in it changes whenever what is
 * kept there stops being something an older copy can use (a `WeakMap` of storage owner → `Map`
 * of storage key → `SingleFlight` with `kind`, `promise`, `run` and `relabel`, and the numbers
 * `epoch` and `flightEpoch` of {@link Epochs}, `presented` of {@link Presentations},
 * `loginHold` of {@link LoginHolds}, and `retryAfterHolds` of {@link RetryAfterHolds}). The
 * epochs were added without a new version: a copy from before them still uses the flight (it
 * neither reads nor bumps the epoch), and a copy that finds an entry without them adds them to
 * it. So was `presented`, optional: a copy from before it neither notes its presentations nor
 * heeds them (it may present a token past its grace, as all copies did before); and so was its
 * `unsettledAt`: a copy from before it counts the window from `firstAt`, sooner (and takes the
 * issuer's own 503 for an unsettled outcome).
 * So was `loginHold`, optional: a copy from before it keeps its hold to itself and heeds no
 * other's (as all copies did before); and so was `retryAfterHolds`, optional: a copy from
 * before it keeps its `Retry-After` holds to itself and heeds no other's (as all copies did
 * before).
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
 * theft. For the same reason they share the logout epoch ({@link Epochs}): a logout by any of
 * them must end what the others have under way, or one of them stores the pair its refresh or
 * login got after the logout and the user is logged back in. Keyed by the `wx` object as well
 * because storage belongs to it: clients on different storage (the tests' stubs, each a
 * device) share nothing.
 *
 * This is the package's one global, against the "no globals" habit on purpose: copies share no
 * module state, only the JS context's global object (and the storage the flight protects). When
 * that object cannot be reached or extended, the flight is shared within this copy only.
 */
export function sharedFlight<T, K extends string>(storage: object, storageKey: string): SharedFlight<T, K> {
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
  // A new entry, or one an older copy registered: the epochs go on the object itself, so
  // that it stays the one every client on the storage uses.
  const shared = flight as SingleFlight<unknown, string> & Partial<Epochs>;
  if (typeof shared.epoch !== "number") {
    shared.epoch = 0;
  }
  if (typeof shared.flightEpoch !== "number") {
    shared.flightEpoch = shared.epoch;
  }
  return shared as unknown as SharedFlight<T, K>;
}
