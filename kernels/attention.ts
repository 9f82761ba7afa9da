/**
 * Causal grouped-query self-attention, flash style (FlashAttention-2): an
 * online softmax over streamed keys, no T×T buffer anywhere, and no work on
 * key blocks above the causal diagonal.
 *
 * Layout: qkv (B, T, (NH + 2·NKV)·HS) is the fused projection output: per token
 * NH query heads, then NKV key heads, then NKV value heads. out (B, T, NH·HS)
 * puts head h at h·HS, ready for the output projection. lse (B, NH, T) f32 is
 * the natural log-sum-exp of each row's scaled scores, saved for the backward.
 * Query head h reads kv head floor(h / (NH/NKV)).
 *
 * A workgroup owns a block of rows (queries, or keys in dK/dV) of one
 * (b, head); each thread owns `rows` of them and keeps their vectors and
 * accumulators in registers while it streams the other side's rows, a chunk of
 * 1–4 at a time, from storage or from tiles staged in workgroup memory (see
 * {@link AttentionPlan}). Streaming stops at the block's last row; rows mask
 * what is past the diagonal. Without workgroup memory the block's own span is
 * streamed in segments, the later ones for the thread's later rows only (the
 * rows a SIMD vector of threads holds together), so a 64-row block does not
 * compute all 64×64 of its diagonal pairs. Scores are kept in log2 units (q or
 * k prescaled by scale·log2 e) so every exponential is an exp2.
 *
 * - Forward: running max m, running sum l, accumulator rescaled by
 *   exp2(m_old − m_new) per chunk; out = acc / l, lse = (m + log2 l)·ln 2.
 *   m is kept an integer (the running max rounded up), so the rescale is an
 *   exact power of two made from its exponent bits rather than an exp2 (0 once
 *   it falls below 2^-126, and for the initial −big), and each p = exp2(s − m)
 *   stays ≤ 1.
 * - Backward (overwrites dqkv, every element: it is an activation gradient),
 *   two dispatches, no atomics, so results are bit-identical run to run:
 *   1. dQ, per query block streaming K and V up to the diagonal:
 *      P = exp(S − lse), dP = dO·Vᵀ, dS = P∘(dP − D), dQ = dS·K·scale, where
 *      D = rowsum(dO∘O) is computed here and stored for pass 2 in a scratch
 *      buffer (B·NH·T f32) this module keeps per device and size.
 *   2. dK and dV, per key block of one kv head, streaming Q and dO of the
 *      queries at or after the block, for each query head sharing the kv head
 *      in a fixed order: dV += Pᵀ·dO, dK += dSᵀ·Q·scale.
 *
 * Head counts, HS, scale and the plan are baked into the WGSL; B comes from
 * the grid and T from the length of lse, so one pipeline serves every batch
 * size and sequence length (a software adapter takes seconds to compile one).
 *
 * f16 variants come from the dtypes: qkv, out, dout and dqkv may each be f16
 * (storage only: arithmetic and accumulation are f32); lse is always f32.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import type { Recorder } from "./recorder.ts";
import { qkvSizes } from "./rope.ts";
import type { Binding } from "./pipeline.ts";
import type { Tensor } from "./tensor.ts";
import {
  canStageTexels,
  scratchTexels,
  type StagedTexels,
  stageTexels,
  texelReaderWgsl,
  texelWriterWgsl,
} from "./texels.ts";
import { scratchTensor } from "./scratch.ts";
import { expectLoopTrips } from "./selftest.ts";
import { noteCall, tunedChoice } from "./tuning_state.ts";
import { declare, expectDType, expectF16Support, expectShape } from "./wgsl.ts";
import { type AttentionSizes, AttentionWgsl } from "./attention_wgsl.ts";

/** The largest head size: past it the registers a thread holds (4·HS floats per row in the backward) are absurd. */
const MAX_HS = 256;
/** The scratch texture through which the backward's dQ pass hands row statistics to the dK/dV pass. */
const STATS_SLOT = "attention row stats";

/**
 * How the kernels map rows to threads. A workgroup owns `rows`·`threads`
 * consecutive rows (queries in the forward and dQ, keys in dK/dV) of one
 * (b, head); thread t owns rows t, t + threads, ... and keeps their vectors and
 * accumulators in registers. Pass one as `plan` to benchmark or tune a mapping.
 *
 * @example
 * ```ts
 * // Two rows per thread, no workgroup memory: a variant to time against the default.
 * const plan: AttentionPlan = { rows: 2, threads: 32, chunk: 2, shared: false };
 * attentionForward(rec, { out, lse, qkv, nHead: NH, nKvHead: NKV, plan });
 * ```
 */
export interface AttentionPlan {
  /** Rows each thread owns: every streamed vec4 it loads feeds that many rows' FMAs. */
  rows: number;
  /** Threads per workgroup (at most 256). */
  threads: number;
  /**
   * Streamed rows per step of the inner loop (1, 2 or 4): the online softmax
   * rescales once per step, but the step's loads are unrolled in the code, and
   * software adapters compile large loop bodies slowly.
   */
  chunk: number;
  /**
   * Stage the streamed rows in workgroup memory, a tile at a time, so each is
   * read from storage once per workgroup (GPUs). Without it each thread reads
   * the streamed rows from storage itself: no barriers, no copies (CPU).
   */
  shared: boolean;
  /**
   * Without workgroup memory, read the streamed rows by texel fetches from staged
   * copies of qkv and dout (software adapters, where a storage load costs a loop
   * over the SIMD lanes; see `texels.ts`). Default false.
   */
  textures?: boolean;
}

/**
 * The plans {@link chooseAttentionPlan} picks from:
 * - `gpu`: one row per thread, 64 threads, K/V (or Q/dO) tiles in workgroup
 *   memory: registers a GPU thread can hold (2·HS floats forward, 4·HS in dK/dV),
 *   and every workgroup-memory read is a broadcast.
 * - `cpu`: eight rows per thread, one vector of 8 threads, two streamed rows a
 *   step, every row read from staged textures. On a software adapter a load from
 *   workgroup or storage memory is a loop over the SIMD lanes and a texel fetch
 *   an emulated gather, so FMAs per fetch is what counts, and registers that
 *   spill are cheap (stack loads). At HS 64 on lavapipe this ran the forward in
 *   0.8× and the backward in 0.9× the time of four rows per thread.
 */
export const ATTENTION_PLANS: Readonly<Record<"gpu" | "cpu", Readonly<AttentionPlan>>> = Object.freeze({
  gpu: Object.freeze({ rows: 1, threads: 64, chunk: 4, shared: true }),
  cpu: Object.freeze({ rows: 8, threads: 8, chunk: 2, shared: false, textures: true }),
});

/**
 * The plan the attention kernels use on `gpu` for heads of `headSize`: `gpu`,
 * or on a software adapter `cpu` with at most 512 floats of a row vector per
 * thread (fewer rows past HS 64, in blocks of 64 rows): LLVM's compile time
 * grows steeply with a thread's vectors (eight rows of four HS-64 vectors in
 * dK/dV take it ~24 s to compile, with its diagonal segments; once per machine
 * with Mesa's disk cache).
 *
 * @param gpu The device.
 * @param headSize HS.
 * @returns The plan.
 */
export function chooseAttentionPlan(gpu: Gpu, headSize: number): Readonly<AttentionPlan> {
  if (!gpu.info.fallback) return ATTENTION_PLANS.gpu;
  const { cpu } = ATTENTION_PLANS;
  const rows = Math.max(1, Math.min(cpu.rows, Math.floor(512 / headSize)));
  return rows === cpu.rows ? cpu : { ...cpu, rows, threads: (cpu.rows * cpu.threads) / rows };
}

/**
 * Arguments of {@link attentionForward}: its outputs, the fused projections
 * and the head counts.
 *
 * @example
 * ```ts
 * const args: AttentionForwardArgs = {
 *   out: gpu.tensor([B, T, NH * HS]),
 *   lse: gpu.tensor([B, NH, T]),
 *   qkv, // [B, T, (NH + 2·NKV)·HS]
 *   nHead: NH,
 *   nKvHead: NKV,
 * };
 * attentionForward(rec, args);
 * ```
 */
export interface AttentionForwardArgs {
  /** Output (B, T, NH·HS), f32 or f16; overwritten. */
  out: Tensor;
  /** Saved log-sum-exp of the scaled scores (B, NH, T), f32; overwritten. */
  lse: Tensor;
  /** Fused projections (B, T, (NH + 2·NKV)·HS), f32 or f16. */
  qkv: Tensor;
  /** Query heads NH. */
  nHead: number;
  /** Key/value heads NKV (divides NH). */
  nKvHead: number;
  /** Score scale; default 1/√HS. */
  scale?: number;
  /** Overrides the plan {@link chooseAttentionPlan} picks, or tuning chose (tests, benchmarks, tuning). */
  plan?: AttentionPlan;
}

/**
 * Arguments of {@link attentionBackward}: the gradient to write, the incoming
 * gradient, and what the forward took and saved.
 *
 * @example
 * ```ts
 * const args: AttentionBackwardArgs = {
 *   dqkv: gpu.tensor(qkv.shape), // [B, T, (NH + 2·NKV)·HS], overwritten
 *   dout, // [B, T, NH·HS]
 *   out, lse, qkv, // as the forward left them
 *   nHead: NH,
 *   nKvHead: NKV,
 * };
 * attentionBackward(rec, args);
 * ```
 */
export interface AttentionBackwardArgs {
  /** Gradient with respect to qkv (B, T, (NH + 2·NKV)·HS), f32 or f16; overwritten. */
  dqkv: Tensor;
  /** Gradient with respect to out (B, T, NH·HS), f32 or f16. */
  dout: Tensor;
  /** The forward's output. */
  out: Tensor;
  /** The forward's lse (B, NH, T), f32. */
  lse: Tensor;
  /** The forward's input. */
  qkv: Tensor;
  /** Query heads NH. */
  nHead: number;
  /** Key/value heads NKV. */
  nKvHead: number;
  /** Score scale, as in the forward; default 1/√HS. */
  scale?: number;
  /** Overrides the plan {@link chooseAttentionPlan} picks. */
  plan?: AttentionPlan;
}

/**
 * Records causal self-attention: out = softmax(scale·Q·Kᵀ + causal mask)·V per
 * head, and lse for the backward.
 *
 * @param rec The recorder.
 * @param args Outputs `out`, `lse`; input `qkv`; `nHead`, `nKvHead`, optional `scale`.
 * @example
 * ```ts
 * const qkv = gpu.tensor([B, T, (NH + 2 * NKV) * HS]);
 * const out = gpu.tensor([B, T, NH * HS]);
 * const lse = gpu.tensor([B, NH, T]);
 * const rec = gpu.recorder();
 * attentionForward(rec, { out, lse, qkv, nHead: NH, nKvHead: NKV });
 * rec.submit();
 * ```
 */
export function attentionForward(rec: Recorder, args: AttentionForwardArgs): void {
  const kernel = "attentionForward";
  const { out, lse, qkv } = args;
  const s = sizesOf(kernel, qkv, args.nHead, args.nKvHead, args.scale);
  const { B, T, NH, HS } = s;
  expectDType(kernel, "out", out, ["f32", "f16"]);
  expectDType(kernel, "lse", lse, ["f32"]);
  expectShape(kernel, "out", out, [B, T, NH * HS]);
  expectShape(kernel, "lse", lse, [B, NH, T]);
  expectF16Support(kernel, rec.gpu.features.f16, [out, qkv]);
  expectDisjoint(kernel, [["out", out], ["lse", lse]], [["qkv", qkv]]);
  const key = callKey("forward", s, `${qkv.dtype}->${out.dtype}`);
  if (!args.plan) noteCall(rec, key, { kind: "attention forward", args });
  const plan = args.plan ?? tunedChoice<AttentionPlan>(rec.gpu, key);
  const g = new AttentionWgsl(s, planOf(kernel, rec, s, plan, [qkv]));
  expectLoopTrips(rec.gpu, kernel, g.loopTrips(1), "use a shorter sequence");
  const staged = g.plan.textures ? stageTexels(rec, qkv, "attention qkv") : null;
  const { wgsl, bindings } = withTexels(
    declare([
      // With texels every row of qkv is read from its staged copy.
      ...(staged ? [] : [{ name: "qkv", tensor: qkv, element: `vec4<${qkv.dtype}>` }]),
      { name: "out", tensor: out, write: true, element: `vec4<${out.dtype}>` },
      { name: "lse", tensor: lse, write: true },
    ]),
    staged ? [["qkv", staged]] : [],
  );
  const label = `${kernel} ${qkv.dtype}->${out.dtype} HS${HS} ${g.name}`;
  const pipeline = rec.gpu.pipelines.get(label, g.forward(wgsl, out.dtype));
  rec.dispatch(pipeline, bindings, g.grid(NH, B));
}

/**
 * Records the gradient of {@link attentionForward} with respect to qkv,
 * overwriting `dqkv`; recomputes the probabilities chunk by chunk from `lse`.
 * Two dispatches: dQ (which also stores D = rowsum(dO∘O) in a scratch buffer
 * this module keeps per device and size), then dK and dV.
 *
 * @param rec The recorder.
 * @param args Output `dqkv`; `dout`, the forward's `out`, `lse`, `qkv`; sizes and `scale`.
 * @example
 * ```ts
 * attentionBackward(rec, { dqkv, dout, out, lse, qkv, nHead: NH, nKvHead: NKV });
 * ```
 */
export function attentionBackward(rec: Recorder, args: AttentionBackwardArgs): void {
  const kernel = "attentionBackward";
  const { dqkv, dout, out, lse, qkv } = args;
  const s = sizesOf(kernel, qkv, args.nHead, args.nKvHead, args.scale);
  const { B, T, NH, NKV, HS } = s;
  for (const [name, t] of [["dqkv", dqkv], ["dout", dout], ["out", out]] as const) {
    expectDType(kernel, name, t, ["f32", "f16"]);
  }
  expectDType(kernel, "lse", lse, ["f32"]);
  expectShape(kernel, "dqkv", dqkv, qkv.shape);
  expectShape(kernel, "dout", dout, [B, T, NH * HS]);
  expectShape(kernel, "out", out, [B, T, NH * HS]);
  expectShape(kernel, "lse", lse, [B, NH, T]);
  expectF16Support(kernel, rec.gpu.features.f16, [dqkv, dout, out, qkv]);
  expectDisjoint(kernel, [["dqkv", dqkv]], [["qkv", qkv], ["out", out], ["dout", dout], ["lse", lse]]);
  const key = callKey("backward", s, `${qkv.dtype}/${dout.dtype}/${out.dtype}->${dqkv.dtype}`);
  if (!args.plan) noteCall(rec, key, { kind: "attention backward", args });
  const plan = args.plan ?? tunedChoice<AttentionPlan>(rec.gpu, key);
  const g = new AttentionWgsl(s, planOf(kernel, rec, s, plan, [qkv, dout, out], B * NH * T));
  expectLoopTrips(rec.gpu, kernel, g.loopTrips(NH / NKV), "use a shorter sequence");
  const types = `${qkv.dtype}/${dout.dtype}->${dqkv.dtype} HS${HS} ${g.name}`;
  const lseArg = { name: "lse", tensor: lse };
  const dqkvArg = { name: "dqkv", tensor: dqkv, write: true, element: `vec4<${dqkv.dtype}>` };
  if (g.plan.textures) {
    // Every row is read from a staged copy, and the dQ pass hands each query row's
    // lse·log2 e and D to the dK/dV pass as a texel of a scratch texture.
    const staged = {
      qkv: stageTexels(rec, qkv, "attention qkv"),
      dout: stageTexels(rec, dout, "attention dout"),
      out: stageTexels(rec, out, "attention out"),
      stats: scratchTexels(rec.gpu, STATS_SLOT, B * NH * T)!,
    };
    const streams = [["qkv", staged.qkv], ["dout", staged.dout]] as const;
    const q = withTexels(declare([lseArg, dqkvArg]), [...streams, ["out", staged.out]], [[
      "stats",
      staged.stats,
    ]]);
    rec.dispatch(
      rec.gpu.pipelines.get(`${kernel} dQ ${types}`, g.backwardQuery(q.wgsl, dqkv.dtype)),
      q.bindings,
      g.grid(NH, B),
    );
    const kv = withTexels(declare([lseArg, dqkvArg]), [...streams, ["stats", staged.stats]]);
    const dkv = rec.gpu.pipelines.get(`${kernel} dK/dV ${types}`, g.backwardKeyValue(kv.wgsl, dqkv.dtype));
    rec.dispatch(dkv, kv.bindings, g.grid(NKV, B));
    return;
  }
  const delta = scratchTensor(rec.gpu, "attention D", B * NH * T);
  const q = declare([
    { name: "qkv", tensor: qkv, element: `vec4<${qkv.dtype}>` },
    { name: "out", tensor: out, element: `vec4<${out.dtype}>` },
    { name: "dout", tensor: dout, element: `vec4<${dout.dtype}>` },
    lseArg,
    dqkvArg,
    { name: "delta", tensor: delta, write: true },
  ]);
  rec.dispatch(
    rec.gpu.pipelines.get(`${kernel} dQ ${types}`, g.backwardQuery(q.wgsl, dqkv.dtype)),
    q.bindings,
    g.grid(NH, B),
  );
  const kv = declare([
    { name: "qkv", tensor: qkv, element: `vec4<${qkv.dtype}>` },
    { name: "dout", tensor: dout, element: `vec4<${dout.dtype}>` },
    lseArg,
    { name: "delta", tensor: delta },
    dqkvArg,
  ]);
  const dkv = rec.gpu.pipelines.get(`${kernel} dK/dV ${types}`, g.backwardKeyValue(kv.wgsl, dqkv.dtype));
  rec.dispatch(dkv, kv.bindings, g.grid(NKV, B));
}

/**
 * Adds textures to a kernel's declarations, bound after the storage ones: for each
 * of `reads`, `fetch_{name}(i)` reads texel i; for each of `writes`,
 * `store_{name}(i, v)` writes it.
 */
function withTexels(
  decl: { wgsl: string; bindings: Binding[] },
  reads: readonly (readonly [string, StagedTexels])[],
  writes: readonly (readonly [string, StagedTexels])[] = [],
): { wgsl: string; bindings: Binding[] } {
  const first = decl.bindings.length;
  const lines = [
    ...reads.map(([name, staged], i) => texelReaderWgsl(`fetch_${name}`, first + i, staged)),
    ...writes.map(([name, staged], i) => texelWriterWgsl(`store_${name}`, first + reads.length + i, staged)),
  ];
  return {
    wgsl: [decl.wgsl, ...lines].join("\n"),
    bindings: [...decl.bindings, ...[...reads, ...writes].map(([, staged]) => staged.view)],
  };
}

/** The key a call's plan is tuned under (see `tune.ts`): its pass, dtypes and sizes. */
function callKey(pass: "forward" | "backward", s: AttentionSizes, dtypes: string): string {
  return `attention ${pass} ${dtypes} B${s.B} T${s.T} NH${s.NH} NKV${s.NKV} HS${s.HS}`;
}

/** Checks qkv and the head counts; returns the sizes with the scale resolved. */
function sizesOf(
  kernel: string,
  qkv: Tensor,
  nHead: number,
  nKvHead: number,
  scale?: number,
): AttentionSizes {
  expectDType(kernel, "qkv", qkv, ["f32", "f16"]);
  const [B, T, HS] = qkvSizes(kernel, "qkv", qkv, nHead, nKvHead);
  if (HS % 4 !== 0 || HS > MAX_HS) {
    throw new GpuError(
      `${kernel}: head size ${HS} is not supported; use a multiple of 4 up to ${MAX_HS} (the kernels load vec4s)`,
    );
  }
  const resolved = scale ?? 1 / Math.sqrt(HS);
  if (!Number.isFinite(resolved)) throw new GpuError(`${kernel}: scale ${scale} must be finite`);
  return { B, T, NH: nHead, NKV: nKvHead, HS, scale: resolved };
}

/**
 * The plan to run: `plan` or the one chosen, checked; rows come from textures
 * only without workgroup memory, when every tensor read can be staged and, for
 * the backward, when its `statsTexels` row statistics fit the scratch texture.
 */
function planOf(
  kernel: string,
  rec: Recorder,
  s: AttentionSizes,
  plan: AttentionPlan | undefined,
  read: readonly Tensor[],
  statsTexels = 0,
): AttentionPlan {
  const chosen = plan ?? chooseAttentionPlan(rec.gpu, s.HS);
  const textures = (chosen.textures ?? false) && !chosen.shared &&
    read.every((t) => canStageTexels(rec.gpu, t)) &&
    (statsTexels === 0 || scratchTexels(rec.gpu, STATS_SLOT, statsTexels) !== null);
  const p = { ...chosen, textures };
  const ok = [p.rows, p.threads].every((n) => Number.isInteger(n) && n >= 1) && p.threads <= 256 &&
    p.rows <= 16 && [1, 2, 4].includes(p.chunk) && (p.rows * p.threads) % p.chunk === 0;
  if (!ok) {
    throw new GpuError(
      `${kernel}: plan ${
        JSON.stringify(p)
      } is invalid; rows 1..16, threads 1..256, chunk 1, 2 or 4 dividing rows·threads`,
    );
  }
  return p;
}

/** Refuses outputs that overlap inputs (the kernels read inputs while writing outputs). */
function expectDisjoint(
  kernel: string,
  outputs: readonly (readonly [string, Tensor])[],
  inputs: readonly (readonly [string, Tensor])[],
): void {
  for (const [oName, o] of outputs) {
    for (const [iName, i] of inputs) {
      const overlap = o.buffer === i.buffer && o.byteOffset < i.byteOffset + i.byteLength &&
        i.byteOffset < o.byteOffset + o.byteLength;
      if (overlap) {
        throw new GpuError(
          `${kernel}: ${oName} "${o.label}" overlaps ${iName} "${i.label}"; give it its own memory`,
        );
      }
    }
  }
}
