/**
 * Bench cases of causal self-attention and RoPE. Attention is compute-bound:
 * GFLOP/s count only the causal-useful work (query i attends to i + 1 keys):
 * 4·HS FLOPs per (query, key) pair forward (S = QKᵀ and P·V), 10·HS backward
 * (S recomputed, dV, dP, dQ, dK; the kernels recompute S and dP once more
 * each, which is not counted). The naive baseline materialises the (B, NH, T, T)
 * scores and softmax with one-thread-per-output kernels; a matmul with the
 * forward's FLOPs is timed alongside for the flash-vs-matmul target. RoPE is
 * memory-bound (GB/s).
 *
 * @module
 */

import { attentionBackward, attentionForward, type AttentionPlan } from "../../kernels/attention.ts";
import type { Gpu } from "../../kernels/device.ts";
import { matmul } from "../../kernels/matmul.ts";
import type { Recorder } from "../../kernels/recorder.ts";
import { ropeForward } from "../../kernels/rope.ts";
import type { Tensor } from "../../kernels/tensor.ts";
import { declare, float } from "../../kernels/wgsl.ts";
import { type KernelBench, type PreparedOp, timeSideBySide } from "./harness.ts";

/** One attention problem. */
interface Shape {
  B: number;
  T: number;
  NH: number;
  NKV: number;
  HS: number;
}

/** Tensors of one attention problem, filled so softmax is neither flat nor one-hot. */
function allocate(gpu: Gpu, s: Shape) {
  const width = (s.NH + 2 * s.NKV) * s.HS;
  const fill = (n: number, seed: number) =>
    Float32Array.from({ length: n }, (_, i) => Math.sin(i * seed) * 1.5);
  const qkv = gpu.tensor([s.B, s.T, width], "f32", {
    label: "bench qkv",
    data: fill(s.B * s.T * width, 0.37),
  });
  const dout = gpu.tensor([s.B, s.T, s.NH * s.HS], "f32", {
    label: "bench dout",
    data: fill(s.B * s.T * s.NH * s.HS, 0.73),
  });
  const out = gpu.tensor([s.B, s.T, s.NH * s.HS], "f32", { label: "bench out" });
  const lse = gpu.tensor([s.B, s.NH, s.T], "f32", { label: "bench lse" });
  const dqkv = gpu.tensor([s.B, s.T, width], "f32", { label: "bench dqkv" });
  return { qkv, dout, out, lse, dqkv, all: [qkv, dout, out, lse, dqkv] };
}

function releaseAll(gpu: Gpu, tensors: Tensor[]): void {
  for (const t of tensors) gpu.release(t);
}

/** Causal (query, key) pairs of one head: T(T + 1)/2. */
function pairs(s: Shape): number {
  return s.B * s.NH * s.T * (s.T + 1) / 2;
}

/**
 * Flash forward and backward at block_size 256 against naive attention, a
 * matmul with the forward's FLOPs, and RoPE at the same model shape.
 *
 * @param gpu The device (a CPU fallback gets a small batch and head count).
 * @param plan The flash kernels' plan, by default the one they choose.
 * @returns The cases.
 */
export function attentionBenches(gpu: Gpu, plan?: AttentionPlan): KernelBench[] {
  const s: Shape = gpu.info.fallback
    ? { B: 1, T: 256, NH: 4, NKV: 4, HS: 64 }
    : { B: 16, T: 256, NH: 12, NKV: 12, HS: 64 };
  const heads = { nHead: s.NH, nKvHead: s.NKV, plan };
  const qkvBytes = s.B * s.T * (s.NH + 2 * s.NKV) * s.HS * 4;
  const outBytes = s.B * s.T * s.NH * s.HS * 4;
  const lseBytes = s.B * s.NH * s.T * 4;
  const shape = [s.B, s.T, s.NH, s.HS];
  // matmul [T, K]·[K, T] with K = B·NH·HS: 2·T²·K FLOPs, the forward's 4·HS per pair up to T² vs T(T+1).
  const k = s.B * s.NH * s.HS;
  return [
    {
      name: "attention",
      variant: "flash forward (causal FLOPs)",
      shape,
      dtype: "f32",
      flops: 4 * s.HS * pairs(s),
      bytes: qkvBytes + outBytes + lseBytes,
      prepare(gpu) {
        const t = allocate(gpu, s);
        return {
          record: (rec) => attentionForward(rec, { out: t.out, lse: t.lse, qkv: t.qkv, ...heads }),
          release: () => releaseAll(gpu, t.all),
        };
      },
      naive: (gpu) => naiveAttention(gpu, s, false),
    },
    {
      name: "attention",
      variant: "flash backward (causal FLOPs)",
      shape,
      dtype: "f32",
      flops: 10 * s.HS * pairs(s),
      bytes: 2 * qkvBytes + 2 * outBytes + lseBytes,
      prepare(gpu) {
        const t = allocate(gpu, s);
        const rec = gpu.recorder();
        attentionForward(rec, { out: t.out, lse: t.lse, qkv: t.qkv, ...heads });
        rec.submit();
        return {
          record: (rec) =>
            attentionBackward(rec, {
              dqkv: t.dqkv,
              dout: t.dout,
              out: t.out,
              lse: t.lse,
              qkv: t.qkv,
              ...heads,
            }),
          release: () => releaseAll(gpu, t.all),
        };
      },
      naive: (gpu) => naiveAttention(gpu, s, true),
    },
    {
      name: "attention",
      variant: "matmul with the forward's FLOPs",
      shape: [s.T, s.T, k],
      dtype: "f32",
      flops: 2 * s.T * s.T * k,
      bytes: (2 * s.T * k + s.T * s.T) * 4,
      prepare(gpu) {
        const a = gpu.tensor([s.T, k], "f32", { label: "bench a" });
        const b = gpu.tensor([k, s.T], "f32", { label: "bench b" });
        const out = gpu.tensor([s.T, s.T], "f32", { label: "bench out" });
        return { record: (rec) => matmul(rec, { out, a, b }), release: () => releaseAll(gpu, [a, b, out]) };
      },
    },
    {
      name: "rope",
      variant: "forward in place (f32)",
      shape,
      dtype: "f32",
      flops: 0,
      bytes: 2 * s.B * s.T * (s.NH + s.NKV) * s.HS * 4, // q and k read and written
      prepare(gpu) {
        const t = allocate(gpu, s);
        return {
          record: (rec) => ropeForward(rec, { qkv: t.qkv, nHead: s.NH, nKvHead: s.NKV, theta: 10000 }),
          release: () => releaseAll(gpu, t.all),
        };
      },
    },
  ];
}

/**
 * Naive attention: scores (B, NH, T, T) materialised, softmax in place, then
 * P·V (forward); the backward starts from the saved P and materialises dP and
 * dS. One thread per output element, loops over the reduced dimension.
 */
function naiveAttention(gpu: Gpu, s: Shape, backward: boolean): PreparedOp {
  const t = allocate(gpu, s);
  const p = gpu.tensor([s.B, s.NH, s.T, s.T], "f32", { label: "naive P" });
  const dp = gpu.tensor([s.B, s.NH, s.T, s.T], "f32", { label: "naive dP" });
  const consts = `const B = ${s.B}u;
const T = ${s.T}u;
const NH = ${s.NH}u;
const NKV = ${s.NKV}u;
const GROUP = ${s.NH / s.NKV}u;
const HS = ${s.HS}u;
const ROW = ${(s.NH + 2 * s.NKV) * s.HS}u;
const OUT = ${s.NH * s.HS}u;
const SCALE = ${float(1 / Math.sqrt(s.HS))};
fn qAt(b: u32, i: u32, h: u32) -> u32 { return (b * T + i) * ROW + h * HS; }
fn kAt(b: u32, j: u32, h: u32) -> u32 { return (b * T + j) * ROW + (NH + h / GROUP) * HS; }
fn vAt(b: u32, j: u32, h: u32) -> u32 { return (b * T + j) * ROW + (NH + NKV + h / GROUP) * HS; }
fn pAt(b: u32, h: u32, i: u32, j: u32) -> u32 { return ((b * NH + h) * T + i) * T + j; }`;
  const kernels: [string, { name: string; tensor: Tensor; write?: boolean }[], number, string][] = [
    // [label, bindings, threads, body with thread index n]
    [
      "scores",
      [{ name: "qkv", tensor: t.qkv }, { name: "p", tensor: p, write: true }],
      s.B * s.NH * s.T * s.T,
      `
      let j = n % T; let i = (n / T) % T; let h = (n / (T * T)) % NH; let b = n / (T * T * NH);
      var acc = -1e30;
      if (j <= i) {
        acc = 0.0;
        for (var d = 0u; d < HS; d++) { acc += qkv[qAt(b, i, h) + d] * qkv[kAt(b, j, h) + d]; }
        acc *= SCALE;
      }
      p[n] = acc;`,
    ],
    [
      "softmax",
      [{ name: "p", tensor: p, write: true }, { name: "lse", tensor: t.lse, write: true }],
      s.B * s.NH * s.T,
      `
      let row = n * T;
      var m = -1e30;
      for (var j = 0u; j < T; j++) { m = max(m, p[row + j]); }
      var sum = 0.0;
      for (var j = 0u; j < T; j++) { sum += exp(p[row + j] - m); }
      for (var j = 0u; j < T; j++) { p[row + j] = exp(p[row + j] - m) / sum; }
      lse[n] = m + log(sum);`,
    ],
    [
      "P·V",
      [{ name: "qkv", tensor: t.qkv }, { name: "p", tensor: p }, { name: "out", tensor: t.out, write: true }],
      s.B * s.T * s.NH * s.HS,
      `
      let d = n % HS; let h = (n / HS) % NH; let i = (n / OUT) % T; let b = n / (OUT * T);
      var acc = 0.0;
      for (var j = 0u; j <= i; j++) { acc += p[pAt(b, h, i, j)] * qkv[vAt(b, j, h) + d]; }
      out[n] = acc;`,
    ],
  ];
  const backwardKernels: typeof kernels = [
    [
      "dP",
      [{ name: "qkv", tensor: t.qkv }, { name: "dout", tensor: t.dout }, {
        name: "dp",
        tensor: dp,
        write: true,
      }],
      s.B * s.NH * s.T * s.T,
      `
      let j = n % T; let i = (n / T) % T; let h = (n / (T * T)) % NH; let b = n / (T * T * NH);
      var acc = 0.0;
      if (j <= i) {
        for (var d = 0u; d < HS; d++) { acc += dout[(b * T + i) * OUT + h * HS + d] * qkv[vAt(b, j, h) + d]; }
      }
      dp[n] = acc;`,
    ],
    [
      "dS",
      [{ name: "p", tensor: p }, { name: "dp", tensor: dp, write: true }],
      s.B * s.NH * s.T,
      `
      let row = n * T;
      var dsum = 0.0;
      for (var j = 0u; j < T; j++) { dsum += p[row + j] * dp[row + j]; }
      for (var j = 0u; j < T; j++) { dp[row + j] = p[row + j] * (dp[row + j] - dsum); }`,
    ],
    [
      "dQ",
      [{ name: "qkv", tensor: t.qkv }, { name: "dp", tensor: dp }, {
        name: "dqkv",
        tensor: t.dqkv,
        write: true,
      }],
      s.B * s.T * s.NH * s.HS,
      `
      let d = n % HS; let h = (n / HS) % NH; let i = (n / OUT) % T; let b = n / (OUT * T);
      var acc = 0.0;
      for (var j = 0u; j <= i; j++) { acc += dp[pAt(b, h, i, j)] * qkv[kAt(b, j, h) + d]; }
      dqkv[qAt(b, i, h) + d] = acc * SCALE;`,
    ],
    [
      "dK dV",
      [{ name: "qkv", tensor: t.qkv }, { name: "dout", tensor: t.dout }, { name: "p", tensor: p }, {
        name: "dp",
        tensor: dp,
      }, { name: "dqkv", tensor: t.dqkv, write: true }],
      s.B * s.T * s.NKV * s.HS,
      `
      let d = n % HS; let kvh = (n / HS) % NKV; let j = (n / (NKV * HS)) % T; let b = n / (NKV * HS * T);
      var dk = 0.0;
      var dv = 0.0;
      for (var g = 0u; g < GROUP; g++) {
        let h = kvh * GROUP + g;
        for (var i = j; i < T; i++) {
          dk += dp[pAt(b, h, i, j)] * qkv[qAt(b, i, h) + d];
          dv += p[pAt(b, h, i, j)] * dout[(b * T + i) * OUT + h * HS + d];
        }
      }
      dqkv[kAt(b, j, kvh * GROUP) + d] = dk * SCALE;
      dqkv[vAt(b, j, kvh * GROUP) + d] = dv;`,
    ],
  ];
  const record = (rec: Recorder, list: typeof kernels) => {
    for (const [label, decls, threads, body] of list) {
      const { wgsl, bindings } = declare(decls);
      const code = `${wgsl}\n${consts}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let n = gid.x + gid.y * nwg.x * 64u;
  if (n >= ${threads}u) { return; }
  ${body}
}`;
      const groups = Math.ceil(threads / 64);
      const limit = gpu.limits.maxComputeWorkgroupsPerDimension;
      const y = Math.ceil(groups / limit);
      rec.dispatch(gpu.pipelines.get(`naive attention ${label}`, code), bindings, [Math.ceil(groups / y), y]);
    }
  };
  if (backward) {
    const rec = gpu.recorder();
    record(rec, kernels);
    rec.submit();
  }
  return {
    record: (rec) => record(rec, backward ? backwardKernels : kernels),
    release: () => releaseAll(gpu, [...t.all, p, dp]),
  };
}

/** Attention time over the time of a matmul with the same FLOPs, timed side by side. */
export interface AttentionVsMatmul {
  /** Flash forward over the matmul with its FLOPs (the target is 2 or less). */
  forward: number;
  /** Flash backward over 2.5 matmuls (its FLOPs: 10·HS per pair against 4·HS). */
  backward: number;
}

/** Calls of each op a round of {@link attentionVsMatmul} times together: a few ms each on lavapipe, too short alone. */
const CALLS_PER_ROUND = 4;

/**
 * The flash-vs-matmul target, measured side by side: the forward, the backward and
 * the matmul with the forward's FLOPs of {@link attentionBenches} in rotating order,
 * {@link CALLS_PER_ROUND} calls each, each round's times divided by its matmul's.
 *
 * @param gpu The device.
 * @param plan The flash kernels' plan, by default the one they choose.
 * @returns The two ratios (medians over the rounds).
 */
export async function attentionVsMatmul(gpu: Gpu, plan?: AttentionPlan): Promise<AttentionVsMatmul> {
  const cases = attentionBenches(gpu, plan);
  const find = (variant: string): PreparedOp => {
    const op = cases.find((c) => c.name === "attention" && c.variant.startsWith(variant))!.prepare(gpu);
    return {
      record: (rec) => {
        for (let i = 0; i < CALLS_PER_ROUND; i++) op.record(rec);
      },
      release: () => op.release(),
    };
  };
  const ops = {
    matmul: find("matmul with"),
    forward: find("flash forward"),
    backward: find("flash backward"),
  };
  try {
    const ratios = await timeSideBySide(gpu, ops.matmul, { forward: ops.forward, backward: ops.backward });
    return { forward: ratios.forward, backward: ratios.backward / 2.5 };
  } finally {
    for (const op of Object.values(ops)) op.release();
  }
}
