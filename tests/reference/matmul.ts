/**
 * Float64 references of the matmul kernels: the product op(a)·op(b) and its
 * analytic gradients, batched, with either operand optionally shared across the
 * batch. Written as plain loops over the stored layouts, independent of the GPU code.
 *
 * @module
 */

/** Sizes and layouts of a product out[BATCH, M, N] = op(a)·op(b). */
export interface MatmulDims {
  /** Output rows. */
  m: number;
  /** Output columns. */
  n: number;
  /** Inner dimension. */
  k: number;
  /** Batch entries of `out` (default 1). */
  batch?: number;
  /** a is stored [K, M]. */
  transposeA?: boolean;
  /** b is stored [N, K]. */
  transposeB?: boolean;
  /** a has one matrix per batch entry (default true); false: one matrix shared by all. */
  aBatched?: boolean;
  /** b has one matrix per batch entry (default true); false: one matrix shared by all. */
  bBatched?: boolean;
}

/** Index helpers for the stored layouts of a and b. */
function layout(d: MatmulDims) {
  const { m, n, k } = d;
  const batch = d.batch ?? 1;
  const aStride = (d.aBatched ?? true) ? m * k : 0;
  const bStride = (d.bBatched ?? true) ? k * n : 0;
  return {
    batch,
    aLength: (aStride ? batch : 1) * m * k,
    bLength: (bStride ? batch : 1) * k * n,
    a: (p: number, i: number, kk: number) => p * aStride + (d.transposeA ? kk * m + i : i * k + kk),
    b: (p: number, kk: number, j: number) => p * bStride + (d.transposeB ? j * k + kk : kk * n + j),
  };
}

/**
 * out[p, i, j] = Σ_k op(a)[p, i, k] · op(b)[p, k, j].
 *
 * @param a The stored a.
 * @param b The stored b.
 * @param dims Sizes and layouts.
 * @returns out, [BATCH, M, N] flattened.
 */
export function matmulRef(a: ArrayLike<number>, b: ArrayLike<number>, dims: MatmulDims): Float64Array {
  const { m, n, k } = dims;
  const at = layout(dims);
  const out = new Float64Array(at.batch * m * n);
  for (let p = 0; p < at.batch; p++) {
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let sum = 0;
        for (let kk = 0; kk < k; kk++) sum += a[at.a(p, i, kk)] * b[at.b(p, kk, j)];
        out[(p * m + i) * n + j] = sum;
      }
    }
  }
  return out;
}

/**
 * Gradients of L = Σ dout ⊙ (op(a)·op(b)) with respect to the stored a and b:
 * dop(a) = dout·op(b)ᵀ and dop(b) = op(a)ᵀ·dout, laid out as a and b are (a
 * shared operand sums its gradient over the batch).
 *
 * @param dout Gradient of the output, [BATCH, M, N].
 * @param a The stored a.
 * @param b The stored b.
 * @param dims Sizes and layouts.
 * @returns `da` and `db`, shaped like a and b.
 */
export function matmulBackwardRef(
  dout: ArrayLike<number>,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  dims: MatmulDims,
): { da: Float64Array; db: Float64Array } {
  const { m, n, k } = dims;
  const at = layout(dims);
  const da = new Float64Array(at.aLength);
  const db = new Float64Array(at.bLength);
  for (let p = 0; p < at.batch; p++) {
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        const g = dout[(p * m + i) * n + j];
        for (let kk = 0; kk < k; kk++) {
          da[at.a(p, i, kk)] += g * b[at.b(p, kk, j)];
          db[at.b(p, kk, j)] += g * a[at.a(p, i, kk)];
        }
      }
    }
  }
  return { da, db };
}
