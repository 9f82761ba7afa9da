/**
 * A bias-free linear layer over activations (B, T, in) with a Hugging Face
 * weight (out, in): the forward y = x·Wᵀ and its backward dx = dy·W,
 * dW += dyᵀ·x, each a matmul without explicit transposes.
 *
 * @module
 */

import { matmul } from "../kernels/matmul.ts";
import type { Recorder } from "../kernels/recorder.ts";
import type { Tensor } from "../kernels/tensor.ts";

/**
 * A (B, T, X) activation seen as the (B·T, X) matrix matmul expects.
 *
 * @param t An activation.
 * @returns The same data as rows.
 */
export function rows(t: Tensor): Tensor {
  const width = t.shape[t.shape.length - 1];
  return t.reshape([t.length / width, width]);
}

/**
 * y = x·Wᵀ (overwrites y).
 *
 * @param rec The recorder.
 * @param args `y` (…, out), `x` (…, in), `weight` (out, in).
 */
export function linear(rec: Recorder, args: { y: Tensor; x: Tensor; weight: Tensor }): void {
  matmul(rec, { out: rows(args.y), a: rows(args.x), b: args.weight, transposeB: true });
}

/**
 * dx = dy·W (overwrites dx) and dW += dyᵀ·x (a parameter gradient: adds; skipped
 * without `dweight`, for a frozen weight).
 *
 * @param rec The recorder.
 * @param args `dx` (…, in), `dweight` (out, in) or undefined, `dy` (…, out), `x` (…, in), `weight` (out, in).
 */
export function linearBackward(
  rec: Recorder,
  args: { dx: Tensor; dweight?: Tensor; dy: Tensor; x: Tensor; weight: Tensor },
): void {
  matmul(rec, { out: rows(args.dx), a: rows(args.dy), b: args.weight });
  if (args.dweight) {
    matmul(rec, { out: args.dweight, a: rows(args.dy), b: rows(args.x), transposeA: true, accumulate: true });
  }
}
