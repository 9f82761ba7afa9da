/**
 * Per-kernel GPU timing with timestamp queries: a {@link Recorder} given a timer
 * wraps each dispatch in its own pass whose start and end are stamped.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";

/**
 * The GPU time of one timed dispatch, as {@link GpuTimer.read} returns it.
 *
 * @example
 * ```ts
 * const times: KernelTime[] = await timer.read();
 * const slowest = times.reduce((a, b) => (b.ms > a.ms ? b : a)); // e.g. { label: "matmul ...", ms: 0.8 }
 * ```
 */
export interface KernelTime {
  /** The pipeline's label. */
  label: string;
  /** GPU time in milliseconds. */
  ms: number;
}

/**
 * Measures the GPU time of each dispatch of a {@link Recorder} it is given, with
 * timestamp queries, for up to `capacity` dispatches per submit. Needs a device
 * with `timestamp-query`; check {@link GpuTimer.unavailableReason} first.
 *
 * @example
 * ```ts
 * if (GpuTimer.unavailableReason(gpu) === "") {
 *   const timer = new GpuTimer(gpu);
 *   const rec = gpu.recorder({ timer });
 *   matmul(rec, { out: y, a: x, b: weight, transposeB: true });
 *   rec.submit();
 *   console.log(await timer.read()); // [{ label: "matmul ...", ms: 0.8 }]
 * }
 * ```
 */
export class GpuTimer {
  /**
   * Says why a device cannot time dispatches, so that callers can fall back to
   * wall-clock times instead of catching the constructor's error.
   *
   * @param gpu The device.
   * @returns A one-line reason, or "" when the device can time.
   */
  static unavailableReason(gpu: Gpu): string {
    return gpu.features.timestamps
      ? ""
      : "GPU timing not available: the adapter lacks timestamp-query (times are wall-clock)";
  }

  #gpu: Gpu;
  #capacity: number;
  #querySet: GPUQuerySet;
  #resolveBuffer: GPUBuffer;
  #readBuffer: GPUBuffer;
  #labels: string[] = [];
  #resolved = 0;

  /**
   * Creates a timer with its query set and readback buffers.
   *
   * @param gpu A device with `timestamp-query` on.
   * @param capacity Most dispatches timed per submit.
   * @throws {GpuError} When the device cannot time.
   * @example
   * ```ts
   * const timer = new GpuTimer(gpu);
   * const rec = gpu.recorder({ timer });
   * // ... record kernels ...
   * rec.submit();
   * console.log(await timer.read()); // [{ label: "matmul", ms: 0.8 }, ...]
   * ```
   */
  constructor(gpu: Gpu, capacity = 512) {
    const reason = GpuTimer.unavailableReason(gpu);
    if (reason) throw new GpuError(reason);
    this.#gpu = gpu;
    this.#capacity = capacity;
    this.#querySet = gpu.device.createQuerySet({ label: "timer", type: "timestamp", count: 2 * capacity });
    this.#resolveBuffer = gpu.createBuffer(
      "timer resolve",
      16 * capacity,
      GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    );
    this.#readBuffer = gpu.createBuffer(
      "timer read",
      16 * capacity,
      GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    );
  }

  /**
   * Reserves the next pair of timestamps for a pass.
   *
   * @param label The dispatch's name.
   * @returns The pass's `timestampWrites`.
   */
  next(label: string): GPUComputePassTimestampWrites {
    const index = this.#labels.length;
    if (index >= this.#capacity) {
      throw new GpuError(`GpuTimer holds ${this.#capacity} dispatches; create it with a larger capacity`);
    }
    this.#labels.push(label);
    return {
      querySet: this.#querySet,
      beginningOfPassWriteIndex: 2 * index,
      endOfPassWriteIndex: 2 * index + 1,
    };
  }

  /**
   * Records the copy of the timestamps into a readable buffer (the recorder calls this).
   *
   * @param encoder The encoder being finished.
   */
  resolve(encoder: GPUCommandEncoder): void {
    const count = this.#labels.length;
    if (count === 0) return;
    encoder.resolveQuerySet(this.#querySet, 0, 2 * count, this.#resolveBuffer, 0);
    encoder.copyBufferToBuffer(this.#resolveBuffer, 0, this.#readBuffer, 0, 16 * count);
    this.#resolved = count;
  }

  /**
   * Waits for the submitted work and returns each timed dispatch; resets the timer.
   *
   * @returns One entry per dispatch, in recording order.
   */
  async read(): Promise<KernelTime[]> {
    const count = this.#resolved;
    const labels = this.#labels.slice(0, count);
    this.#labels = [];
    this.#resolved = 0;
    if (count === 0) return [];
    await this.#readBuffer.mapAsync(GPUMapMode.READ, 0, 16 * count);
    const stamps = new BigUint64Array(this.#readBuffer.getMappedRange(0, 16 * count).slice(0));
    this.#readBuffer.unmap();
    await this.#gpu.check();
    return labels.map((label, i) => ({ label, ms: Number(stamps[2 * i + 1] - stamps[2 * i]) / 1e6 }));
  }

  /** Frees the query set and its buffers; read any pending times first. */
  release(): void {
    this.#querySet.destroy();
    for (const buffer of [this.#resolveBuffer, this.#readBuffer]) {
      this.#gpu.stats.bytes -= buffer.size;
      buffer.destroy();
    }
  }
}

/**
 * Sums kernel times by label.
 *
 * @param times From {@link GpuTimer.read}.
 * @returns Milliseconds per label.
 * @example
 * ```ts
 * const totals = totalsByLabel(await timer.read());
 * for (const [label, ms] of totals) console.log(`${label}: ${ms.toFixed(2)} ms`);
 * ```
 */
export function totalsByLabel(times: readonly KernelTime[]): Map<string, number> {
  const totals = new Map<string, number>();
  for (const { label, ms } of times) totals.set(label, (totals.get(label) ?? 0) + ms);
  return totals;
}
