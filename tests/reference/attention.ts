/**
 * Float64 reference of causal grouped-query self-attention with a materialised
 * softmax, and its analytic backward. Layout as the kernels: qkv
 * (B, T, (NH + 2·NKV)·HS) holds per token NH query heads, then NKV key heads,
 * then NKV value heads; out (B, T, NH·HS); lse (B, NH, T). Query head h reads
 * kv head floor(h / (NH/NKV)).
 *
 * @module
 */

import type { QkvSizes } from "./rope.ts";

export type { QkvSizes };

/** Offsets of head h's query, and of its kv head's key and value, within a token's row. */
function offsets(s: QkvSizes, h: number): { row: number; q: number; k: number; v: number } {
  const kv = Math.floor(h / (s.NH / s.NKV));
  return {
    row: (s.NH + 2 * s.NKV) * s.HS,
    q: h * s.HS,
    k: (s.NH + kv) * s.HS,
    v: (s.NH + s.NKV + kv) * s.HS,
  };
}

/**
 * P[b, h, i, j] = softmax_j≤i(scale·q_i·k_j), out_i = Σ_j P_ij·v_j, and
 * lse_i = log Σ_j≤i exp(scale·q_i·k_j).
 *
 * @param qkv Input (B, T, (NH + 2·NKV)·HS).
 * @param s Sizes.
 * @param scale Score scale, usually 1/√HS.
 * @returns `out` (B, T, NH·HS), `lse` (B, NH, T) and the probabilities `p` (B, NH, T, T).
 */
export function attentionRef(
  qkv: ArrayLike<number>,
  s: QkvSizes,
  scale: number,
): { out: Float64Array; lse: Float64Array; p: Float64Array } {
  const { B, T, NH, HS } = s;
  const out = new Float64Array(B * T * NH * HS);
  const lse = new Float64Array(B * NH * T);
  const p = new Float64Array(B * NH * T * T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < NH; h++) {
      const o = offsets(s, h);
      for (let i = 0; i < T; i++) {
        const qi = (b * T + i) * o.row + o.q;
        const logits = new Float64Array(i + 1);
        let max = -Infinity;
        for (let j = 0; j <= i; j++) {
          const kj = (b * T + j) * o.row + o.k;
          let dot = 0;
          for (let d = 0; d < HS; d++) dot += qkv[qi + d] * qkv[kj + d];
          logits[j] = scale * dot;
          max = Math.max(max, logits[j]);
        }
        let sum = 0;
        for (let j = 0; j <= i; j++) sum += Math.exp(logits[j] - max);
        lse[(b * NH + h) * T + i] = max + Math.log(sum);
        const pRow = ((b * NH + h) * T + i) * T;
        for (let j = 0; j <= i; j++) {
          const pij = Math.exp(logits[j] - max) / sum;
          p[pRow + j] = pij;
          const vj = (b * T + j) * o.row + o.v;
          for (let d = 0; d < HS; d++) out[((b * T + i) * NH + h) * HS + d] += pij * qkv[vj + d];
        }
      }
    }
  }
  return { out, lse, p };
}

/**
 * Gradient of {@link attentionRef}'s `out` with respect to qkv: with
 * dP_ij = dout_i·v_j and dS_ij = P_ij·(dP_ij − Σ_k P_ik·dP_ik),
 * dq_i = scale·Σ_j dS_ij·k_j, dk_j = scale·Σ_i dS_ij·q_i and dv_j = Σ_i P_ij·dout_i,
 * summed over the query heads that share a kv head.
 *
 * @param dout Gradient with respect to `out` (B, T, NH·HS).
 * @param qkv Forward input.
 * @param s Sizes.
 * @param scale As in the forward.
 * @returns dqkv (B, T, (NH + 2·NKV)·HS).
 */
export function attentionBackwardRef(
  dout: ArrayLike<number>,
  qkv: ArrayLike<number>,
  s: QkvSizes,
  scale: number,
): Float64Array {
  const { B, T, NH, HS } = s;
  const { p } = attentionRef(qkv, s, scale);
  const dqkv = new Float64Array(qkv.length);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < NH; h++) {
      const o = offsets(s, h);
      for (let i = 0; i < T; i++) {
        const pRow = ((b * NH + h) * T + i) * T;
        const di = ((b * T + i) * NH + h) * HS;
        const dp = new Float64Array(i + 1);
        let rowDot = 0; // Σ_j P_ij·dP_ij, which equals dout_i·out_i
        for (let j = 0; j <= i; j++) {
          const vj = (b * T + j) * o.row + o.v;
          for (let d = 0; d < HS; d++) dp[j] += dout[di + d] * qkv[vj + d];
          rowDot += p[pRow + j] * dp[j];
        }
        const qi = (b * T + i) * o.row + o.q;
        for (let j = 0; j <= i; j++) {
          const pij = p[pRow + j];
          const ds = pij * (dp[j] - rowDot);
          const kj = (b * T + j) * o.row + o.k;
          const vj = (b * T + j) * o.row + o.v;
          for (let d = 0; d < HS; d++) {
            dqkv[qi + d] += scale * ds * qkv[kj + d];
            dqkv[kj + d] += scale * ds * qkv[qi + d];
            dqkv[vj + d] += pij * dout[di + d];
          }
        }
      }
    }
  }
  return dqkv;
}
