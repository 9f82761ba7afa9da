/**
 * Float64 references of RMSNorm (LLaMA: a learned gain, no bias, no mean
 * subtraction) and of its fused residual-add variant, with the analytic backward.
 * Rows are x [N, C] flattened row-major.
 *
 * @module
 */

/**
 * rstd[n] = 1/sqrt(mean(x[n]²) + eps); out[n, c] = x[n, c] · rstd[n] · weight[c].
 *
 * @param x Input [N, C].
 * @param weight Gain [C].
 * @param eps Added to the mean square.
 * @returns `out` [N, C] and `rstd` [N].
 */
export function rmsnormRef(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  eps: number,
): { out: Float64Array; rstd: Float64Array } {
  const C = weight.length;
  const N = x.length / C;
  const out = new Float64Array(N * C);
  const rstd = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[n * C + c] ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[n] = r;
    for (let c = 0; c < C; c++) out[n * C + c] = x[n * C + c] * r * weight[c];
  }
  return { out, rstd };
}

/**
 * Gradients of {@link rmsnormRef}. With g = dout·weight and r = rstd[n]:
 * dx = r·g − x·r³·mean(g·x) (the second term is the gradient through r),
 * dweight[c] = Σ_n dout[n, c]·x[n, c]·r[n].
 *
 * @param dout Gradient of the loss with respect to `out` [N, C].
 * @param x Forward input [N, C].
 * @param weight Gain [C].
 * @param eps As in the forward.
 * @returns `dx` [N, C] and `dweight` [C].
 */
export function rmsnormBackwardRef(
  dout: ArrayLike<number>,
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  eps: number,
): { dx: Float64Array; dweight: Float64Array } {
  const C = weight.length;
  const N = x.length / C;
  const { rstd } = rmsnormRef(x, weight, eps);
  const dx = new Float64Array(N * C);
  const dweight = new Float64Array(C);
  for (let n = 0; n < N; n++) {
    const r = rstd[n];
    let gx = 0;
    for (let c = 0; c < C; c++) gx += dout[n * C + c] * weight[c] * x[n * C + c];
    const coef = (r * r * r * gx) / C;
    for (let c = 0; c < C; c++) {
      const i = n * C + c;
      dx[i] = r * dout[i] * weight[c] - x[i] * coef;
      dweight[c] += dout[i] * x[i] * r;
    }
  }
  return { dx, dweight };
}

/**
 * residualOut = x + branch; out, rstd = {@link rmsnormRef}(residualOut).
 *
 * @param x Residual stream [N, C].
 * @param branch What a block adds to it [N, C].
 * @param weight Gain [C].
 * @param eps Added to the mean square.
 * @returns `residualOut`, `out` [N, C] and `rstd` [N].
 */
export function residualRmsnormRef(
  x: ArrayLike<number>,
  branch: ArrayLike<number>,
  weight: ArrayLike<number>,
  eps: number,
): { residualOut: Float64Array; out: Float64Array; rstd: Float64Array } {
  const residualOut = Float64Array.from(x, (v, i) => v + branch[i]);
  return { residualOut, ...rmsnormRef(residualOut, weight, eps) };
}
