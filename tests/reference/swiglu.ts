/**
 * Float64 references of SwiGLU on the packed output of the fused gate/up matmul:
 * gateUp [N, 2H] holds gate in columns 0..H−1 and up in H..2H−1.
 *
 * @module
 */

/**
 * sigmoid(g), without overflow for large |g|.
 *
 * @param g Any finite number.
 * @returns 1 / (1 + e^−g).
 */
export function sigmoidRef(g: number): number {
  const e = Math.exp(-Math.abs(g));
  return (g >= 0 ? 1 : e) / (1 + e);
}

/**
 * out[n, h] = silu(gate[n, h]) · up[n, h] with silu(g) = g·sigmoid(g).
 *
 * @param gateUp Packed gate and up [N, 2H].
 * @param H Hidden width.
 * @returns `out` [N, H].
 */
export function swigluRef(gateUp: ArrayLike<number>, H: number): Float64Array {
  const N = gateUp.length / (2 * H);
  const out = new Float64Array(N * H);
  for (let n = 0; n < N; n++) {
    for (let h = 0; h < H; h++) {
      const g = gateUp[n * 2 * H + h];
      out[n * H + h] = g * sigmoidRef(g) * gateUp[n * 2 * H + H + h];
    }
  }
  return out;
}

/**
 * Gradient of {@link swigluRef}: with s = sigmoid(g),
 * dgate = dout·up·s·(1 + g·(1 − s)) and dup = dout·g·s.
 *
 * @param dout Gradient with respect to `out` [N, H].
 * @param gateUp Forward input [N, 2H].
 * @param H Hidden width.
 * @returns `dgateUp` [N, 2H], packed like `gateUp`.
 */
export function swigluBackwardRef(
  dout: ArrayLike<number>,
  gateUp: ArrayLike<number>,
  H: number,
): Float64Array {
  const N = gateUp.length / (2 * H);
  const dgateUp = new Float64Array(N * 2 * H);
  for (let n = 0; n < N; n++) {
    for (let h = 0; h < H; h++) {
      const g = gateUp[n * 2 * H + h];
      const u = gateUp[n * 2 * H + H + h];
      const d = dout[n * H + h];
      const s = sigmoidRef(g);
      dgateUp[n * 2 * H + h] = d * u * s * (1 + g * (1 - s));
      dgateUp[n * 2 * H + H + h] = d * g * s;
    }
  }
  return dgateUp;
}
