/**
 * Reference of kernels/draw.ts in float64: the same counter-based noise, then
 * the argmax of logits/temperature + noise with ties to the lowest id.
 *
 * @module
 */

/** PCG's output permutation on u32, as the WGSL `hash`. */
export function hash(x: number): number {
  const s = (Math.imul(x >>> 0, 747796405) + 2891336453) >>> 0;
  const w = Math.imul(((s >>> ((s >>> 28) + 4)) ^ s) >>> 0, 277803737) >>> 0;
  return ((w >>> 22) ^ w) >>> 0;
}

/** The kernel's Gumbel noise for (seed, step, sequence b, token v). */
export function gumbel(seed: number, step: number, b: number, v: number): number {
  const h = hash((seed ^ hash((step ^ hash((b ^ hash(v)) >>> 0)) >>> 0)) >>> 0);
  const u = ((h >>> 8) + 0.5) / 16777216;
  return -Math.log(-Math.log(u));
}

/** The token the kernel draws for row `b` of `logits` (B, V). */
export function drawRef(
  logits: ArrayLike<number>,
  V: number,
  b: number,
  draw: { temperature: number; seed: number; step: number },
): number {
  let best = -Infinity;
  let token = 0;
  for (let v = 0; v < V; v++) {
    const logit = logits[b * V + v];
    const score = draw.temperature === 0
      ? logit
      : logit / draw.temperature + gumbel(draw.seed, draw.step, b, v);
    if (score > best) [best, token] = [score, v];
  }
  return token;
}
