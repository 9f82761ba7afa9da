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
 * dispatches where available, else wall clock over a batch of calls.
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
  const samples: number[] = [];
  if (gpu.features.timestamps) {
    const timer = new GpuTimer(gpu, 256);
    for (let i = 0; i < iterations; i++) {
      const rec = gpu.recorder({ timer, label: "bench" });
      op.record(rec);
      rec.submit();
      const times = await timer.read();
      samples.push(times.reduce((sum, t) => sum + t.ms, 0));
    }
  } else {
    for (let i = 0; i < iterations; i++) {
      const start = performance.now();
      const rec = gpu.recorder({ label: "bench" });
      op.record(rec);
      rec.submit();
      await gpu.sync();
      samples.push(performance.now() - start);
    }
  }
  return median(samples);
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
