/**
 * Shared test plumbing: one GPU device per test process, seeded random data,
 * and a closeness assertion that names the worst element.
 *
 * @module
 */

import { type Gpu, requestGpu } from "../kernels/device.ts";

let shared: Promise<Gpu> | null = null;

/** The process-wide test device (created on first use; f16 and timestamps when offered). */
export function testGpu(): Promise<Gpu> {
  return shared ??= requestGpu();
}

/**
 * Deterministic uniform numbers in [-scale, scale) (mulberry32), so failures reproduce.
 *
 * @param length How many.
 * @param seed Any integer.
 * @param scale Half-width of the range.
 */
export function randomArray(length: number, seed: number, scale = 1): Float64Array {
  let state = seed >>> 0;
  const out = new Float64Array(length);
  for (let i = 0; i < length; i++) {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

/** Tolerance of {@link assertClose}: |actual - expected| <= atol + rtol·|expected|. */
export interface Tolerance {
  /** Absolute part. */
  atol: number;
  /** Relative part. */
  rtol: number;
}

/**
 * Asserts |actual[i] - expected[i]| <= atol + rtol·|expected[i]| for every i;
 * the failure names the worst element and how far it is off.
 *
 * @param actual GPU values.
 * @param expected Reference values.
 * @param tolerance atol and rtol.
 * @param what Names the quantity in the failure message.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tolerance: Tolerance,
  what = "values",
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} != expected ${expected.length}`);
  }
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < expected.length; i++) {
    const allowed = tolerance.atol + tolerance.rtol * Math.abs(expected[i]);
    const error = Math.abs(actual[i] - expected[i]);
    const excess = Number.isNaN(error) ? Infinity : error / allowed;
    if (excess > 1 && excess > worstExcess) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    throw new Error(
      `${what}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} ` +
        `(error ${Math.abs(actual[worst] - expected[worst]).toExponential(2)} > ` +
        `atol ${tolerance.atol} + rtol ${tolerance.rtol}·|expected|)`,
    );
  }
}

/**
 * Central finite differences of a scalar function, in float64:
 * g[i] ≈ (f(x + h·e_i) - f(x - h·e_i)) / 2h.
 *
 * @param f The function (typically a float64 reference forward, reduced to a scalar).
 * @param x The point (left unchanged).
 * @param h Step size.
 * @returns The gradient estimate.
 */
export function finiteDifferences(f: (x: Float64Array) => number, x: Float64Array, h = 1e-5): Float64Array {
  const grad = new Float64Array(x.length);
  const probe = Float64Array.from(x); // x itself is never modified
  for (let i = 0; i < x.length; i++) {
    probe[i] = x[i] + h;
    const up = f(probe);
    probe[i] = x[i] - h;
    const down = f(probe);
    probe[i] = x[i];
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

/**
 * Σ out[i]·weights[i]: reduces an op's output to a scalar loss whose gradient
 * with respect to the output is `weights`, for gradient checks.
 */
export function weightedSum(out: ArrayLike<number>, weights: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < out.length; i++) s += out[i] * weights[i];
  return s;
}
