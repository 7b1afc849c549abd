/**
 * @file Single flight: concurrent callers of {@link SingleFlight.run} share one running
 * promise instead of each starting their own. Pure (no `wx`), unit-tested on its own.
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
