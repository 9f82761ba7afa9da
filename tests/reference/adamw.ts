/**
 * Float64 references of the optimizer kernels: sums and the squared gradient
 * norm (kernels/reduce.ts), and one PyTorch-style AdamW step with gradient
 * clipping and unscaling (kernels/adamw.ts).
 *
 * @module
 */

/** Σ x, in float64. */
export function sumRef(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  return s;
}

/** Σ x², in float64. */
export function sumSquaresRef(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return s;
}

/** Σ |x|, in float64: the scale of the rounding error of a float sum. */
export function sumAbsRef(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += Math.abs(x[i]);
  return s;
}

/** The optimizer state the reference updates in place. */
export interface AdamWStateRef {
  /** Parameters. */
  params: Float64Array;
  /** First moments. */
  m: Float64Array;
  /** Second moments. */
  v: Float64Array;
}

/** Hyperparameters of one step, as kernels/adamw.ts takes them. */
export interface AdamWHyperRef {
  /** Learning rate. */
  lr: number;
  /** β1. */
  beta1: number;
  /** β2. */
  beta2: number;
  /** eps. */
  eps: number;
  /** Weight decay λ. */
  weightDecay: number;
  /** Clip threshold; 0 or Infinity: none. */
  maxGradNorm: number;
  /** Step t ≥ 1. */
  step: number;
  /** Multiplies the stored gradients (1/lossScale). Default 1. */
  gradScale?: number;
}

/**
 * One AdamW step, straight from the definitions: g = grad · gradScale · clip with
 * clip = min(1, maxGradNorm / (‖grad‖·gradScale + 1e-6)); then
 * p ← p(1 − lr·λ·decay_i), m ← β1m + (1−β1)g, v ← β2v + (1−β2)g²,
 * p ← p − lr · (m/(1−β1^t)) / (√(v/(1−β2^t)) + eps). A non-finite norm skips the step.
 *
 * @param state Updated in place (unless skipped).
 * @param grads The stored gradients.
 * @param decay Per parameter: truthy where weight decay applies.
 * @param hyper The step's hyperparameters.
 * @returns The norm of the unscaled gradients, the clip factor, and whether the step was skipped.
 */
export function adamwStepRef(
  state: AdamWStateRef,
  grads: ArrayLike<number>,
  decay: ArrayLike<number | boolean>,
  hyper: AdamWHyperRef,
): { norm: number; clip: number; skipped: boolean } {
  const gradScale = hyper.gradScale ?? 1;
  const norm = Math.sqrt(sumSquaresRef(grads)) * gradScale;
  if (!Number.isFinite(norm)) return { norm, clip: 1, skipped: true };
  const clipping = hyper.maxGradNorm > 0 && Number.isFinite(hyper.maxGradNorm);
  const clip = clipping ? Math.min(1, hyper.maxGradNorm / (norm + 1e-6)) : 1;
  const { lr, beta1, beta2, eps, weightDecay, step } = hyper;
  const { params, m, v } = state;
  for (let i = 0; i < params.length; i++) {
    const g = grads[i] * gradScale * clip;
    if (decay[i]) params[i] *= 1 - lr * weightDecay;
    m[i] = beta1 * m[i] + (1 - beta1) * g;
    v[i] = beta2 * v[i] + (1 - beta2) * g * g;
    const mHat = m[i] / (1 - beta1 ** step);
    const vHat = v[i] / (1 - beta2 ** step);
    params[i] -= lr * mHat / (Math.sqrt(vHat) + eps);
  }
  return { norm, clip, skipped: false };
}
