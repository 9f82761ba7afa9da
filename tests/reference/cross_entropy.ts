/**
 * Float64 references of the fused softmax cross-entropy kernels. Rows are
 * `logits[r·V .. (r+1)·V)`; a target equal to `ignoreIndex` is ignored.
 *
 * @module
 */

/** Per-row loss (0 when ignored) and log-sum-exp (0 when ignored); NaN loss for a target ≥ V. */
export function crossEntropyRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  vocab: number,
  ignoreIndex: number,
): { losses: Float64Array; lse: Float64Array } {
  const n = targets.length;
  const losses = new Float64Array(n);
  const lse = new Float64Array(n);
  for (let r = 0; r < n; r++) {
    const t = targets[r];
    if (t === ignoreIndex) continue;
    let max = -Infinity;
    for (let j = 0; j < vocab; j++) max = Math.max(max, logits[r * vocab + j]);
    let sum = 0;
    for (let j = 0; j < vocab; j++) sum += Math.exp(logits[r * vocab + j] - max);
    lse[r] = max + Math.log(sum);
    losses[r] = t < vocab ? lse[r] - logits[r * vocab + t] : NaN;
  }
  return { losses, lse };
}

/** Mean loss over the rows not ignored (0 when none) and their count. */
export function lossMeanRef(
  losses: ArrayLike<number>,
  targets: ArrayLike<number>,
  ignoreIndex: number,
): { mean: number; count: number } {
  let sum = 0;
  let count = 0;
  for (let r = 0; r < targets.length; r++) {
    if (targets[r] === ignoreIndex) continue;
    sum += losses[r];
    count++;
  }
  return { mean: count > 0 ? sum / count : 0, count };
}

/** The mean cross-entropy as one function of the logits (what finite differences perturb). */
export function meanCrossEntropyRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  vocab: number,
  ignoreIndex: number,
): number {
  return lossMeanRef(crossEntropyRef(logits, targets, vocab, ignoreIndex).losses, targets, ignoreIndex).mean;
}

/** Analytic gradient of `scale` · mean cross-entropy: (softmax − onehot)·scale/count, 0 on ignored rows. */
export function crossEntropyBackwardRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  vocab: number,
  ignoreIndex: number,
  scale = 1,
): Float64Array {
  const { lse } = crossEntropyRef(logits, targets, vocab, ignoreIndex);
  const { count } = lossMeanRef(new Float64Array(targets.length), targets, ignoreIndex);
  const dlogits = new Float64Array(targets.length * vocab);
  for (let r = 0; r < targets.length; r++) {
    if (targets[r] === ignoreIndex) continue;
    for (let j = 0; j < vocab; j++) {
      const p = Math.exp(logits[r * vocab + j] - lse[r]);
      dlogits[r * vocab + j] = (p - (j === targets[r] ? 1 : 0)) * scale / count;
    }
  }
  return dlogits;
}
