/**
 * A progress bar for long runs: redrawn in place on a terminal, silent
 * otherwise (callers print their own periodic lines there). Lines printed
 * through it appear above the bar.
 *
 * @module
 */

/** A one-line bar with a count, a percentage and an ETA. */
export class ProgressBar {
  #tty: boolean;
  #total: number;
  #start = performance.now();
  #startCount: number;
  #shown = false;
  #lastDraw = 0;

  /**
   * Starts a bar.
   *
   * @param total The count at completion.
   * @param start The count now (a resumed run starts part way).
   * @param tty Draw it (true on a terminal).
   */
  constructor(total: number, start: number, tty: boolean) {
    this.#total = total;
    this.#startCount = start;
    this.#tty = tty;
  }

  /**
   * Redraws the bar at `count` (at most ten times a second).
   *
   * @param count Progress so far.
   */
  update(count: number): void {
    if (!this.#tty) return;
    const now = performance.now();
    if (now - this.#lastDraw < 100 && count < this.#total) return;
    this.#lastDraw = now;
    const fraction = this.#total > 0 ? Math.min(1, count / this.#total) : 1;
    const width = 30;
    const filled = Math.round(fraction * width);
    const done = count - this.#startCount;
    const rate = done / ((now - this.#start) / 1000);
    const eta = rate > 0 ? formatDuration((this.#total - count) / rate) : "?";
    const bar = `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${count}/${this.#total} ` +
      `${(100 * fraction).toFixed(0)}% ETA ${eta}`;
    Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[2K${bar}`));
    this.#shown = true;
  }

  /**
   * Prints a line above the bar.
   *
   * @param line Text without a newline.
   */
  print(line: string): void {
    this.clear();
    console.log(line);
  }

  /** Removes the bar from the screen. */
  clear(): void {
    if (this.#shown) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[2K"));
    this.#shown = false;
    this.#lastDraw = 0;
  }
}

/**
 * Seconds as `1h02m`, `3m05s` or `42s`.
 *
 * @param seconds A duration.
 * @returns Its short form.
 */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}
