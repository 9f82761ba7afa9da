/**
 * Float64 reference of rotary position embedding (Hugging Face LLaMA
 * "rotate_half"): the q and k heads of qkv (B, T, (NH + 2·NKV)·HS) rotated in
 * pairs (i, i + HS/2) by pos·theta^(-2i/HS); v copied unchanged.
 *
 * @module
 */

/** Sizes of a qkv tensor (B, T, (NH + 2·NKV)·HS). */
export interface QkvSizes {
  /** Batch B. */
  B: number;
  /** Time T. */
  T: number;
  /** Query heads NH. */
  NH: number;
  /** Key/value heads NKV. */
  NKV: number;
  /** Head size HS. */
  HS: number;
}

/**
 * Rotates by +angle (`direction` 1, the forward) or −angle (−1, the transpose,
 * which is the backward: a rotation's gradient is its inverse).
 *
 * @param qkv Input (B, T, (NH + 2·NKV)·HS).
 * @param sizes B, T, NH, NKV, HS.
 * @param theta Frequency base.
 * @param positionOffset Position of token 0.
 * @param direction 1 for the forward, −1 for its transpose.
 * @returns A rotated copy.
 */
export function ropeRef(
  qkv: ArrayLike<number>,
  sizes: QkvSizes,
  theta: number,
  positionOffset = 0,
  direction: 1 | -1 = 1,
): Float64Array {
  const { B, T, NH, NKV, HS } = sizes;
  const row = (NH + 2 * NKV) * HS;
  const half = HS / 2;
  const out = Float64Array.from(qkv);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const pos = t + positionOffset;
      for (let i = 0; i < half; i++) {
        const angle = pos * theta ** (-2 * i / HS);
        const c = Math.cos(angle);
        const s = direction * Math.sin(angle);
        for (let h = 0; h < NH + NKV; h++) {
          const a = (b * T + t) * row + h * HS + i;
          const x1 = qkv[a];
          const x2 = qkv[a + half];
          out[a] = x1 * c - x2 * s;
          out[a + half] = x2 * c + x1 * s;
        }
      }
    }
  }
  return out;
}

/**
 * Gradient of {@link ropeRef} (direction 1) with respect to its input: the
 * inverse rotation applied to `dout`.
 *
 * @param dout Gradient with respect to the rotated output.
 * @param sizes B, T, NH, NKV, HS.
 * @param theta Frequency base.
 * @param positionOffset Position of token 0.
 * @returns dqkv.
 */
export function ropeBackwardRef(
  dout: ArrayLike<number>,
  sizes: QkvSizes,
  theta: number,
  positionOffset = 0,
): Float64Array {
  return ropeRef(dout, sizes, theta, positionOffset, -1);
}
