/** Float64 references of the token embedding kernels. @module */

/** out[p, :] = weight[tokens[p], :]; weight is [V, C] row-major. */
export function embeddingRef(
  tokens: ArrayLike<number>,
  weight: ArrayLike<number>,
  channels: number,
): Float64Array {
  const out = new Float64Array(tokens.length * channels);
  for (let p = 0; p < tokens.length; p++) {
    for (let c = 0; c < channels; c++) out[p * channels + c] = weight[tokens[p] * channels + c];
  }
  return out;
}

/** dweight (a copy of `dweight0`, [V, C]) += Σ over positions of token v of dout[p, :]. */
export function embeddingBackwardRef(
  tokens: ArrayLike<number>,
  dout: ArrayLike<number>,
  dweight0: ArrayLike<number>,
  channels: number,
): Float64Array {
  const dweight = Float64Array.from(dweight0);
  for (let p = 0; p < tokens.length; p++) {
    for (let c = 0; c < channels; c++) dweight[tokens[p] * channels + c] += dout[p * channels + c];
  }
  return dweight;
}
