/** Float64 reference of the counter-based dropout mask (same hash as the WGSL). @module */

function pcg(v: number): number {
  const state = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const word = Math.imul((state >>> ((state >>> 28) + 4)) ^ state, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

/** Whether element i is kept for (run seed, step, stream) at drop probability p. */
export function keepRef(run: number, step: number, stream: number, i: number, p: number): boolean {
  const h = pcg((pcg((pcg((run ^ pcg(step)) >>> 0) ^ stream) >>> 0) ^ i) >>> 0);
  return (h >>> 8) / 16777216 >= p;
}
