/**
 * The kernel benchmark harness: time a recorded op (GPU timestamps where the
 * adapter has them, wall clock otherwise), turn times into GFLOP/s and GB/s, and
 * compare with the adapter's measured peak and a naive kernel of the same op.
 *
 * @module
 */

import type { Gpu } from "../../kernels/device.ts";
import type { Recorder } from "../../kernels/recorder.ts";
import { GpuTimer } from "../../kernels/timer.ts";

/** One op at one shape, ready to record; built once, recorded many times. */
export interface PreparedOp {
  /** Records one call of the op. */
  record(rec: Recorder): void;
  /** Frees what `prepare` allocated. */
  release(): void;
}

/** A benchmark case: an op variant at a shape. */
export interface KernelBench {
  /** Op family, e.g. `matmul`. */
  name: string;
  /** Which kernel, e.g. `A·Bᵀ tiled 64x64`. */
  variant: string;
  /** The shape in the op's own terms, e.g. [M, N, K]. */
  shape: number[];
  /** Compute dtype. */
  dtype: "f32" | "f16";
  /** Floating-point operations per call (0 for memory-bound ops). */
  flops: number;
  /** Bytes read plus written per call, at least once each. */
  bytes: number;
  /** Allocates inputs and returns the op to time. */
  prepare(gpu: Gpu): PreparedOp;
  /** The naive kernel of the same op and shape, for the ratio column. */
  naive?: (gpu: Gpu) => PreparedOp;
}

/** A measured case, as written to the JSON report. */
export interface KernelResult {
  /** Op family. */
  name: string;
  /** Kernel variant. */
  variant: string;
  /** Op shape. */
  shape: number[];
  /** Compute dtype. */
  dtype: string;
  /** Milliseconds per call (median). */
  ms: number;
  /** GFLOP/s, for compute-bound ops. */
  gflops?: number;
  /** GB/s of compulsory traffic. */
  gbs?: number;
  /** Share of the measured FMA peak (compute-bound) or copy bandwidth (memory-bound). */
  peak_fraction: number;
  /** Naive kernel time / this kernel's time (how much faster than naive). */
  naive_ratio?: number;
}

/** The adapter's measured peak. */
export interface Peak {
  /** Register-only FMA throughput, GFLOP/s. */
  fma_gflops: number;
  /** Copy bandwidth, GB/s (read + write). */
  copy_gbs: number;
}

/**
 * Median milliseconds per call of `op`: GPU timestamps summed over the op's
 * dispatches and copies where available, else wall clock per call.
 *
 * @param gpu The device.
 * @param op The prepared op.
 * @param options Warm-up calls and timed calls.
 */
export async function timeOp(
  gpu: Gpu,
  op: PreparedOp,
  options: { warmup?: number; iterations?: number } = {},
): Promise<number> {
  const warmup = options.warmup ?? 2;
  const iterations = options.iterations ?? 5;
  const warm = gpu.recorder({ label: "bench warm-up" });
  for (let i = 0; i < warmup; i++) op.record(warm);
  warm.submit();
  await gpu.sync();
  const timer = gpu.features.timestamps ? new GpuTimer(gpu, 256) : null;
  const samples: number[] = [];
  for (let i = 0; i < iterations; i++) samples.push(await timeOnce(gpu, op, timer));
  return median(samples);
}

/** One call's milliseconds: its dispatches' GPU time with a timer, else wall clock to completion. */
async function timeOnce(gpu: Gpu, op: PreparedOp, timer: GpuTimer | null): Promise<number> {
  const start = performance.now();
  const rec = gpu.recorder({ label: "bench", timer: timer ?? undefined });
  op.record(rec);
  rec.submit();
  if (timer) return (await timer.read()).reduce((sum, t) => sum + t.ms, 0);
  await gpu.sync();
  return performance.now() - start;
}

/**
 * Times ops side by side: each round times every op once, in a rotating order,
 * and each op's time is divided by the reference's of the same round; returns the
 * median of those ratios per op. On a noisy host the ratio within a round holds
 * where separate medians, taken seconds apart, drift.
 *
 * @param gpu The device.
 * @param reference The op the others are compared with.
 * @param ops The ops to compare, by name.
 * @param rounds Rounds to run.
 * @returns Each op's median ratio of its time to the reference's.
 */
export async function timeSideBySide(
  gpu: Gpu,
  reference: PreparedOp,
  ops: Record<string, PreparedOp>,
  rounds = 9,
): Promise<Record<string, number>> {
  const all = [reference, ...Object.values(ops)];
  const warm = gpu.recorder({ label: "bench warm-up" });
  for (const op of all) op.record(warm);
  warm.submit();
  await gpu.sync();
  const timer = gpu.features.timestamps ? new GpuTimer(gpu, 256) : null;
  const ratios: number[][] = Object.keys(ops).map(() => []);
  for (let round = 0; round < rounds; round++) {
    const times = new Array<number>(all.length);
    for (let i = 0; i < all.length; i++) {
      const at = (i + round) % all.length;
      times[at] = await timeOnce(gpu, all[at], timer);
    }
    times.slice(1).forEach((t, i) => ratios[i].push(t / times[0]));
  }
  return Object.fromEntries(Object.keys(ops).map((name, i) => [name, median(ratios[i])]));
}

/**
 * The middle value (the upper one of an even count).
 *
 * @param values At least one number.
 * @returns The median.
 */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/**
 * Runs one case (and its naive twin) and derives throughput and ratios.
 *
 * @param gpu The device.
 * @param bench The case.
 * @param peak The adapter's peak.
 * @param options Timing options.
 */
export async function runBench(
  gpu: Gpu,
  bench: KernelBench,
  peak: Peak,
  options: { warmup?: number; iterations?: number } = {},
): Promise<KernelResult> {
  const op = bench.prepare(gpu);
  let ms: number;
  try {
    ms = await timeOp(gpu, op, options);
  } finally {
    op.release();
  }
  const result: KernelResult = {
    name: bench.name,
    variant: bench.variant,
    shape: bench.shape,
    dtype: bench.dtype,
    ms,
    peak_fraction: 0,
  };
  if (bench.flops > 0) {
    result.gflops = bench.flops / ms / 1e6;
    result.peak_fraction = result.gflops / peak.fma_gflops;
  } else {
    result.gbs = bench.bytes / ms / 1e6;
    result.peak_fraction = result.gbs / peak.copy_gbs;
  }
  if (bench.naive) {
    const naive = bench.naive(gpu);
    try {
      result.naive_ratio = (await timeOp(gpu, naive, { warmup: 1, iterations: 3 })) / ms;
    } finally {
      naive.release();
    }
  }
  return result;
}
