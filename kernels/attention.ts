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
import { expectLoopTrips } from "./selftest.ts";
import { declare, expectDType, expectF16Support, expectShape, float } from "./wgsl.ts";

/** Workgroup memory budget, bytes: what NVIDIA and others give without opting in. */
const SHARED_BYTES = 16384;
/** The largest head size: past it the registers a thread holds (4·HS floats per row in the backward) are absurd. */
const MAX_HS = 256;
/** The scratch texture through which the backward's dQ pass hands row statistics to the dK/dV pass. */
const STATS_SLOT = "attention row stats";
/** A finite stand-in for −∞ (WGSL has no infinity literal); exp2 of it minus anything is 0. */
const NEG_BIG = "-1e30";

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
 * dK/dV take it ~17 s to compile, once per machine with Mesa's disk cache).
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
  /** Overrides the plan {@link chooseAttentionPlan} picks (tests, benchmarks, tuning). */
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

interface Sizes {
  B: number;
  T: number;
  NH: number;
  NKV: number;
  HS: number;
  scale: number;
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
  const g = new Gen(s, planOf(kernel, rec, s, args.plan, [qkv]));
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
  const g = new Gen(s, planOf(kernel, rec, s, args.plan, [qkv, dout, out], B * NH * T));
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
  const delta = deltaScratch(rec.gpu, B * NH * T);
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

/** D = rowsum(dO∘O) scratch, (B, NH, T) f32, one per device and size, made on first use. */
const deltas = new WeakMap<Gpu, Map<number, Tensor>>();

function deltaScratch(gpu: Gpu, length: number): Tensor {
  let bySize = deltas.get(gpu);
  if (!bySize) deltas.set(gpu, bySize = new Map());
  let t = bySize.get(length);
  if (!t) bySize.set(length, t = gpu.tensor([length], "f32", { label: "attention D scratch" }));
  return t;
}

/** Checks qkv and the head counts; returns the sizes with the scale resolved. */
function sizesOf(kernel: string, qkv: Tensor, nHead: number, nKvHead: number, scale?: number): Sizes {
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
  s: Sizes,
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

/** `n` pieces `piece(i)` joined: the generated code is unrolled over rows, vec4s and chunk rows. */
function each(n: number, piece: (i: number) => string, joiner = "\n  "): string {
  return Array.from({ length: n }, (_, i) => piece(i)).join(joiner);
}

/**
 * Cuts of a block's diagonal span (see {@link diagonalCuts}). Two ran the
 * kernels in 0.85× the time at HS 32, T 64 and 0.95× at HS 64, T 256 on lavapipe,
 * side by side; three was slower than two, and two compile in 1.6× the time of none.
 */
const DIAGONAL_LEVELS = 2;

/**
 * The cuts of {@link Gen.cuts} for a plan without workgroup memory: R − ⌊R/2⌋,
 * R − ⌊R/4⌋, ... ({@link DIAGONAL_LEVELS} of them), each a whole number of
 * chunks into the block so no chunk straddles one. Each cut adds a loop over
 * the rows after it to the kernel: code to compile, against diagonal work saved.
 */
function diagonalCuts(plan: AttentionPlan): number[] {
  const cuts: number[] = [];
  for (let level = 1; level <= DIAGONAL_LEVELS; level++) {
    const h = plan.rows - Math.floor(plan.rows / 2 ** level);
    const last = cuts[cuts.length - 1] ?? 0;
    if (h > last && h < plan.rows && (h * plan.threads) % plan.chunk === 0) cuts.push(h);
  }
  return cuts;
}

/** One streamed matrix: rows of one head in a (B, T, stride) tensor. */
interface Stream {
  /** The WGSL array. */
  array: string;
  /** WGSL expression: vec4 index of this head's row 0 of batch b. */
  base: string;
  /** Row stride in vec4s (a WGSL constant). */
  stride: string;
}

/** What a loop body reads: vec4 d of chunk row c of stream A or B, and the rows' statistics. */
interface Access {
  a(c: number, d: number): string;
  b(c: number, d: number): string;
  /** A row statistic (0: lse·log2 e, 1: D) of the chunk's rows, as f32 or vecC<f32>. */
  scalars(which: 0 | 1): string;
}

/** Generates the WGSL of one size and plan. Row ρ of a thread is `first + ρ·WG + lid`. */
class Gen {
  readonly H4: number;
  readonly R: number;
  readonly C: number;
  readonly blocks: number;
  readonly tile: number;
  readonly name: string;
  /** ρ = 0..R-1. */
  readonly all: readonly number[];
  /**
   * Where the block's own span (its diagonal) is cut, in rows of the thread
   * (ascending): past the query rows before `h`·WG a query block streams only
   * its rows from h on; see {@link streamSegments}. Empty with workgroup memory.
   */
  readonly cuts: readonly number[];

  constructor(readonly s: Sizes, readonly plan: AttentionPlan) {
    this.H4 = s.HS / 4;
    this.R = plan.rows;
    this.C = plan.chunk;
    this.all = Array.from({ length: plan.rows }, (_, r) => r);
    this.cuts = plan.shared ? [] : diagonalCuts(plan);
    const block = plan.rows * plan.threads;
    this.blocks = Math.ceil(s.T / block);
    // Two tiles of HS floats per row, plus lse and D per row, within the budget.
    const fit = Math.floor(SHARED_BYTES / (2 * s.HS * 4 + 8));
    this.tile = Math.max(4, Math.min(64, Math.floor(fit / 4) * 4));
    const source = plan.shared ? ` tile${this.tile}` : plan.textures ? " texels" : " direct";
    const cut = this.cuts.length > 0 ? ` cut${this.cuts.join(",")}` : "";
    this.name = `${plan.rows}x${plan.threads}/${plan.chunk}${source}${cut}`;
  }

  /**
   * An upper bound on the loop trips of one invocation that streams all T rows
   * `passes` times (dK/dV: once per query head of its kv head), as
   * `expectLoopTrips` counts them (a loop's iterations and the check that ends it).
   */
  loopTrips(passes: number): number {
    const { C, tile, plan, H4 } = this;
    const { T } = this.s;
    const loop = (n: number) => n + 1;
    const tiles = Math.ceil(T / tile);
    const perPass = plan.shared
      ? loop(tiles) +
        tiles * (loop(Math.ceil((tile * H4) / plan.threads)) + loop(Math.ceil(tile / plan.threads)) +
            loop(Math.ceil(tile / C)))
      : Math.ceil(T / C) + this.cuts.length + 1; // a loop per segment, whose chunks tile [0, T)
    return loop(passes) + passes * perPass;
  }

  /** The dispatch: (heads × row blocks, B). */
  grid(heads: number, B: number): [number, number] {
    const x = heads * this.blocks;
    if (x > 65535 || B > 65535) {
      throw new GpuError(
        `attention: ${heads} heads × ${this.blocks} row blocks or batch ${B} exceeds 65535 workgroups per dimension; shorten the sequence or batch`,
      );
    }
    return [x, B];
  }

  /** A value per chunk row from `part(c)`: f32 or vecC<f32>. */
  vec(part: (c: number) => string): string {
    return this.C === 1 ? part(0) : `vec${this.C}<f32>(${each(this.C, part, ", ")})`;
  }

  /** `x` splatted over the chunk rows, as f32 or u32. */
  splat(x: string, type: "f32" | "u32"): string {
    return this.C === 1 ? x : `vec${this.C}<${type}>(${x})`;
  }

  /** Row indices i0, i0 + 1, ... of the chunk (u32 or vecC<u32>). */
  iota(i0: string): string {
    return this.C === 1
      ? i0
      : `vec${this.C}<u32>(${i0}) + vec${this.C}<u32>(${each(this.C, (c) => `${c}u`, ", ")})`;
  }

  /** Chunk row c of a per-chunk value. */
  comp(v: string, c: number): string {
    return this.C === 1 ? v : `${v}.${"xyzw"[c]}`;
  }

  /** Maximum over the chunk rows. */
  hmax(v: string): string {
    if (this.C === 1) return v;
    if (this.C === 2) return `max(${v}.x, ${v}.y)`;
    return `max(max(${v}.x, ${v}.y), max(${v}.z, ${v}.w))`;
  }

  /** Sum over the chunk rows. */
  hsum(v: string): string {
    return this.C === 1 ? v : `dot(${v}, vec${this.C}<f32>(1.0))`;
  }

  /** vec4 `index` of `array` as f32s: a fetch from its staged copy with texels, else a storage load. */
  read(array: string, index: string): string {
    return this.plan.textures ? `fetch_${array}(${index})` : `vec4<f32>(${array}[${index}])`;
  }

  /** Per-row code for the rows of `set` (default all, ρ = 0..R-1). */
  rows(piece: (r: number) => string, joiner = "\n  ", set: readonly number[] = this.all): string {
    return set.map(piece).join(joiner);
  }

  /** Per-row, per-vec4 code. */
  rowVecs(piece: (r: number, d: number) => string, joiner = "\n  "): string {
    return each(this.R, (r) => each(this.H4, (d) => piece(r, d), joiner), joiner);
  }

  header(decls: string): string {
    const { s, plan, H4, tile } = this;
    const shared = plan.shared
      ? `var<workgroup> ta: array<vec4<f32>, ${tile * H4}>;
var<workgroup> tb: array<vec4<f32>, ${tile * H4}>;
var<workgroup> rs0: array<f32, ${tile}>;
var<workgroup> rs1: array<f32, ${tile}>;`
      : "";
    return `${decls}
const NH = ${s.NH}u;
const NKV = ${s.NKV}u;
const GROUP = ${s.NH / s.NKV}u;                  // query heads per kv head
const H4 = ${H4}u;                               // vec4s per head
const ROW4 = ${(s.NH + 2 * s.NKV) * H4}u;        // vec4s per token of qkv
const OUT4 = ${s.NH * H4}u;                      // vec4s per token of out
const WG = ${plan.threads}u;                     // threads per workgroup
const BLOCK = ${plan.rows * plan.threads}u;      // rows per workgroup
const TILE = ${tile}u;                           // streamed rows per workgroup-memory tile
const QSCALE = ${float(s.scale * Math.LOG2E)};   // scale·log2(e): scores in log2 units
const SCALE = ${float(s.scale)};
const LOG2E = ${float(Math.LOG2E)};
const LN2 = ${float(Math.LN2)};
${shared}`;
  }

  /**
   * B is the grid's height and T is read from the length of lse, so one
   * pipeline serves every batch size and sequence length; the grid's width is
   * `heads` × row blocks.
   */
  prologue(heads: "NH" | "NKV"): string {
    return `let B = nwg.y;
  let T = arrayLength(&lse) / (NH * B);
  let NB = (T + BLOCK - 1u) / BLOCK;
  if (wid.x >= ${heads} * NB) { return; }
  let b = wid.y;`;
  }

  /** `let r{ρ}`: this thread's rows, clamped to T − 1 (rows past T compute a copy and skip the write). */
  rowIndices(): string {
    return this.rows((r) => `let r${r} = min(first + ${r * this.plan.threads}u + lid, T - 1u);`);
  }

  /**
   * The entry of the query-block kernels (forward, dQ): which batch, head and
   * block of rows this workgroup owns — the last row blocks, with the most keys
   * to visit, first — and this thread's rows of q, pre-scaled.
   */
  queryBlock(): string {
    return `${this.prologue("NH")}
  let h = wid.x % NH;
  let first = (NB - 1u - wid.x / NH) * BLOCK;
  let kvh = h / GROUP;
  let lid = lidv.x;
  ${this.rowIndices()}
  ${
      this.rowVecs((r, d) =>
        `let q${r}_${d} = ${this.read("qkv", `(b * T + r${r}) * ROW4 + h * H4 + ${d}u`)} * QSCALE;`
      )
    }`;
  }

  /** The WGSL condition that row ρ of this thread exists. */
  valid(r: number): string {
    return `first + ${r * this.plan.threads}u + lid < T`;
  }

  /**
   * Streams the rows a block meets through `body(access, rows)`: for a block of
   * query rows (`owner` "queries") the keys up to its last row, for a block of
   * key rows the queries from its first row on, in one loop per segment of
   * {@link cuts}. A query block streams the keys before first + h·WG for all its
   * rows, then those from there for rows h and later only (the earlier rows would
   * mask them all); a key block mirrors it with cuts R − h.
   */
  streamSegments(
    owner: "queries" | "keys",
    a: Stream,
    b: Stream,
    stats: ((i: string) => string) | null,
    body: (x: Access, rows: readonly number[]) => string,
  ): string {
    const WG = this.plan.threads;
    const at = (rows: number) => rows === 0 ? "first" : `first + ${rows * WG}u`;
    const upTo = (rows: number) => `min(T, first + ${rows * WG}u)`;
    const loop = (start: string, end: string, rows: readonly number[]) =>
      this.stream(start, end, a, b, stats, (x) => body(x, rows));
    const { cuts, R } = this;
    if (owner === "queries") {
      const bounds = [...cuts, R];
      return [
        loop("0u", upTo(bounds[0]), this.all),
        ...cuts.map((h, i) => loop(at(h), upTo(bounds[i + 1]), this.all.slice(h))),
      ].join("\n  ");
    }
    if (cuts.length === 0) return loop(this.plan.shared ? "(first / TILE) * TILE" : "first", "T", this.all);
    const keyCuts = cuts.map((h) => R - h).reverse();
    return [
      ...keyCuts.map((g, i) => loop(at(i === 0 ? 0 : keyCuts[i - 1]), upTo(g), this.all.slice(0, g))),
      loop(at(keyCuts[keyCuts.length - 1]), "T", this.all),
    ].join("\n  ");
  }

  /**
   * Loops over streamed rows [start, end) (bounds uniform over the workgroup;
   * start a multiple of the chunk, and of TILE with workgroup memory) a chunk at
   * a time; `i0` is the chunk's first row in the body. Rows at or past T read as
   * row T − 1 (direct) or 0 (tiles); the body masks them. `stats(i)`, where
   * given, is an expression whose .x and .y are streamed row i's lse·log2 e and D.
   */
  stream(
    start: string,
    end: string,
    a: Stream,
    b: Stream,
    stats: ((i: string) => string) | null,
    body: (x: Access) => string,
  ): string {
    const { H4, C } = this;
    if (this.plan.shared) {
      const fillScalars = stats
        ? `for (var e = lid; e < TILE; e += WG) {
      let st = ${stats("min(t0 + e, T - 1u)")};
      rs0[e] = st.x;
      rs1[e] = st.y;
    }`
        : "";
      const access: Access = {
        a: (c, d) => `ta[at + ${c * H4 + d}u]`,
        b: (c, d) => `tb[at + ${c * H4 + d}u]`,
        scalars: (k) => this.vec((c) => `rs${k}[c0 + ${c}u]`),
      };
      return `for (var t0 = ${start}; t0 < ${end}; t0 += TILE) {
    workgroupBarrier();
    for (var e = lid; e < TILE * H4; e += WG) {
      let i = t0 + e / H4;
      let ic = min(i, T - 1u);
      ta[e] = select(vec4<f32>(0.0), vec4<f32>(${a.array}[${a.base} + ic * ${a.stride} + e % H4]), i < T);
      tb[e] = select(vec4<f32>(0.0), vec4<f32>(${b.array}[${b.base} + ic * ${b.stride} + e % H4]), i < T);
    }
    ${fillScalars}
    workgroupBarrier();
    let cEnd = min(TILE, ${end} - t0);
    for (var c0 = 0u; c0 < cEnd; c0 += ${C}u) {
      let i0 = t0 + c0;
      let at = c0 * H4;
      ${body(access)}
    }
  }`;
    }
    const rowOf = (c: number) => `min(i0 + ${c}u, T - 1u)`;
    const access: Access = {
      a: (c, d) => this.read(a.array, `ia${c} + ${d}u`),
      b: (c, d) => this.read(b.array, `ib${c} + ${d}u`),
      scalars: (k) => this.vec((c) => `st${c}.${"xy"[k]}`),
    };
    return `for (var i0 = ${start}; i0 < ${end}; i0 += ${C}u) {
    ${each(C, (c) => `let ia${c} = ${a.base} + ${rowOf(c)} * ${a.stride};`, "\n    ")}
    ${each(C, (c) => `let ib${c} = ${b.base} + ${rowOf(c)} * ${b.stride};`, "\n    ")}
    ${stats ? each(C, (c) => `let st${c} = ${stats(rowOf(c))};`, "\n    ") : ""}
    ${body(access)}
  }`;
  }

  /**
   * `let ${out}{ρ}`: the dot products of row ρ's registers `${reg}{ρ}_d` with
   * each streamed row of the chunk.
   *
   * In the order of {@link sweep}: with texels row by row, so one row's register
   * is read once for all the chunk's rows and only that row's partial sums are
   * live (on llvmpipe the spilled registers are loaded once and no partial sum
   * goes back to the stack).
   */
  dots(reg: string, load: (c: number, d: number) => string, out: string, set = this.all): string {
    const lines = [
      this.rows((r) => each(this.C, (c) => `var ${out}${r}_${c}: vec4<f32>;`, " "), "\n      ", set),
    ];
    const step = (r: number, c: number, d: number, x: string) =>
      d === 0
        ? `${out}${r}_${c} = ${reg}${r}_${d} * ${x};`
        : `${out}${r}_${c} = fma(${reg}${r}_${d}, ${x}, ${out}${r}_${c});`;
    lines.push(...this.sweep(load, step, set));
    lines.push(
      this.rows(
        (r) => `let ${out}${r} = ${this.vec((c) => `dot(${out}${r}_${c}, vec4<f32>(1.0))`)};`,
        "\n      ",
        set,
      ),
    );
    return lines.join("\n      ");
  }

  /**
   * `step(ρ, c, d, x)` for every row ρ, chunk row c and vec4 d, where x is vec4 d
   * of streamed row c: with texels (all of them already loaded, see
   * {@link loadAll}) row by row, so one row's registers and partial sums are
   * touched together; otherwise each streamed vec4 is read once, for all rows.
   */
  sweep(
    load: (c: number, d: number) => string,
    step: (r: number, c: number, d: number, x: string) => string,
    set = this.all,
  ): string[] {
    const lines: string[] = [];
    if (this.plan.textures) {
      for (const r of set) {
        for (let d = 0; d < this.H4; d++) lines.push(each(this.C, (c) => step(r, c, d, load(c, d)), " "));
      }
    } else {
      for (let c = 0; c < this.C; c++) {
        for (let d = 0; d < this.H4; d++) {
          lines.push(`{ let x = ${load(c, d)}; ${this.rows((r) => step(r, c, d, "x"), " ", set)} }`);
        }
      }
    }
    return lines;
  }

  /**
   * With texels, fetches every vec4 of the chunk's streamed rows once, as
   * `${name}{c}_{d}`, for {@link dots} to take row by row and for bodies that
   * read them twice (a reload from a spill slot is cheaper than a second texel
   * fetch); otherwise (workgroup memory or storage, on a GPU) they are read
   * where used, keeping registers free.
   */
  loadAll(
    name: string,
    load: (c: number, d: number) => string,
  ): { code: string; load: (c: number, d: number) => string } {
    if (!this.plan.textures) return { code: "", load };
    const lines: string[] = [];
    for (let c = 0; c < this.C; c++) {
      for (let d = 0; d < this.H4; d++) lines.push(`let ${name}${c}_${d} = ${load(c, d)};`);
    }
    return { code: lines.join("\n      "), load: (c, d) => `${name}${c}_${d}` };
  }

  /**
   * `${acc}{ρ}_d += Σ_c ${weight}{ρ}[c] · streamed[c][d]`, each streamed vec4 loaded
   * once. An accumulator's chunk terms are added in a row (in chunk order), so a
   * spilled accumulator is loaded and stored once per chunk; with `scale` it is
   * first multiplied by `${scale}{ρ}` inside the first fma (the forward's
   * rescale) rather than in a pass of its own.
   */
  accumulate(
    acc: string,
    weight: string,
    load: (c: number, d: number) => string,
    scale?: string,
    set = this.all,
  ): string {
    const lines: string[] = [];
    for (let d = 0; d < this.H4; d++) {
      const xs = each(this.C, (c) => `let x${c} = ${load(c, d)};`, " ");
      const updates = this.rows(
        (r) => {
          const a = `${acc}${r}_${d}`;
          let value = scale ? `${a} * ${scale}${r}` : a;
          for (let c = 0; c < this.C; c++) {
            value = `fma(vec4<f32>(${this.comp(`${weight}${r}`, c)}), x${c}, ${value})`;
          }
          return `${a} = ${value};`;
        },
        " ",
        set,
      );
      lines.push(`{ ${xs} ${updates} }`);
    }
    return lines.join("\n      ");
  }

  forward(decls: string, outType: string): string {
    const { H4 } = this;
    const body = (x: Access, set: readonly number[]) => {
      const keys = this.loadAll("ka", x.a);
      return `${keys.code}
      ${this.dots("q", keys.load, "s", set)}
      let kk = ${this.iota("i0")};
      ${
        this.rows(
          (r) =>
            `let live${r} = kk <= ${this.splat(`r${r}`, "u32")};
      let sm${r} = select(${this.splat(NEG_BIG, "f32")}, s${r}, live${r});
      let mn${r} = max(m${r}, ceil(${this.hmax(`sm${r}`)}));
      let al${r} = bitcast<f32>(u32(max(m${r} - mn${r} + 127.0, 0.0)) << 23u);
      let p${r} = select(${this.splat("0.0", "f32")}, exp2(sm${r} - mn${r}), live${r});
      l${r} = l${r} * al${r} + ${this.hsum(`p${r}`)};
      m${r} = mn${r};`,
          "\n      ",
          set,
        )
      }
      ${this.accumulate("o", "p", x.b, "al", set)}`;
    };
    return `${this.header(decls)}

@compute @workgroup_size(${this.plan.threads})
fn main(@builtin(local_invocation_id) lidv: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  ${this.queryBlock()}
  ${this.rowVecs((r, d) => `var o${r}_${d} = vec4<f32>(0.0);`)}
  ${this.rows((r) => `var m${r} = ${NEG_BIG};\n  var l${r} = 0.0;`)}
  // Keys up to the block's last row; each row masks the keys after it.
  ${
      this.streamSegments(
        "queries",
        { array: "qkv", base: "b * T * ROW4 + (NH + kvh) * H4", stride: "ROW4" },
        { array: "qkv", base: "b * T * ROW4 + (NH + NKV + kvh) * H4", stride: "ROW4" },
        null,
        body,
      )
    }
  ${
      this.rows((r) =>
        `if (${this.valid(r)}) {
    let inv = 1.0 / l${r};
    ${
          each(H4, (d) =>
            `out[(b * T + r${r}) * OUT4 + h * H4 + ${d}u] = vec4<${outType}>(o${r}_${d} * inv);`, "\n    ")
        }
    lse[(b * NH + h) * T + r${r}] = (m${r} + log2(l${r})) * LN2;
  }`
      )
    }
}`;
  }

  backwardQuery(decls: string, gradType: string): string {
    const { H4 } = this;
    const body = (x: Access, set: readonly number[]) => {
      const keys = this.loadAll("ka", x.a);
      const values = this.loadAll("va", x.b);
      return `${keys.code}
      ${this.dots("q", keys.load, "s", set)}
      let kk = ${this.iota("i0")};
      ${
        this.rows(
          (r) =>
            `let p${r} = select(${this.splat("0.0", "f32")}, exp2(s${r} - ls${r}), kk <= ${
              this.splat(`r${r}`, "u32")
            });`,
          "\n      ",
          set,
        )
      }
      ${values.code}
      ${this.dots("do", values.load, "dp", set)}
      ${this.rows((r) => `let ds${r} = p${r} * (dp${r} - D${r});`, "\n      ", set)}
      ${this.accumulate("dq", "ds", keys.load, undefined, set)}`;
    };
    return `${this.header(decls)}

// dQ = dS·K·scale for a block of query rows, and D = rowsum(dO∘O) for the dK/dV pass.
@compute @workgroup_size(${this.plan.threads})
fn main(@builtin(local_invocation_id) lidv: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  ${this.queryBlock()}
  ${
      this.rowVecs((r, d) =>
        `let do${r}_${d} = ${this.read("dout", `(b * T + r${r}) * OUT4 + h * H4 + ${d}u`)};`
      )
    }
  ${
      this.rows((r) =>
        `let D${r} = dot(${
          each(
            H4,
            (d) => `do${r}_${d} * ${this.read("out", `(b * T + r${r}) * OUT4 + h * H4 + ${d}u`)}`,
            " + ",
          )
        }, vec4<f32>(1.0));`
      )
    }
  ${this.rows((r) => `let ls${r} = lse[(b * NH + h) * T + r${r}] * LOG2E;`)}
  ${this.rowVecs((r, d) => `var dq${r}_${d} = vec4<f32>(0.0);`)}
  ${
      this.streamSegments(
        "queries",
        { array: "qkv", base: "b * T * ROW4 + (NH + kvh) * H4", stride: "ROW4" },
        { array: "qkv", base: "b * T * ROW4 + (NH + NKV + kvh) * H4", stride: "ROW4" },
        null,
        body,
      )
    }
  ${
      this.rows((r) =>
        `if (${this.valid(r)}) {
    ${
          each(
            H4,
            (d) => `dqkv[(b * T + r${r}) * ROW4 + h * H4 + ${d}u] = vec4<${gradType}>(dq${r}_${d} * SCALE);`,
            "\n    ",
          )
        }
    ${
          this.plan.textures
            ? `store_stats((b * NH + h) * T + r${r}, vec4<f32>(ls${r}, D${r}, 0.0, 0.0));`
            : `delta[(b * NH + h) * T + r${r}] = D${r};`
        }
  }`
      )
    }
}`;
  }

  backwardKeyValue(decls: string, gradType: string): string {
    const { H4 } = this;
    const body = (x: Access, set: readonly number[]) => {
      const queries = this.loadAll("qa", x.a);
      const grads = this.loadAll("ga", x.b);
      return `${queries.code}
      ${this.dots("k", queries.load, "s", set)}
      let ls = ${x.scalars(0)};
      let dd = ${x.scalars(1)};
      let qi = ${this.iota("i0")};
      let inT = qi < ${this.splat("T", "u32")};
      ${
        this.rows(
          (r) =>
            `let p${r} = select(${this.splat("0.0", "f32")}, exp2(s${r} - ls), qi >= ${
              this.splat(`r${r}`, "u32")
            } & inT);`,
          "\n      ",
          set,
        )
      }
      ${this.rows((r) => each(this.C, (c) => `var dp${r}_${c} = vec4<f32>(0.0);`, " "), "\n      ", set)}
      ${grads.code}
      ${this.accumulateDvDp(grads.load, set)}
      ${
        this.rows(
          (r) => `let ds${r} = p${r} * (${this.vec((c) => `dot(dp${r}_${c}, vec4<f32>(1.0))`)} - dd);`,
          "\n      ",
          set,
        )
      }
      ${this.accumulate("dk", "ds", queries.load, undefined, set)}`;
    };
    return `${this.header(decls)}

// dK and dV for a block of key rows of one kv head, summed over its query heads in order.
@compute @workgroup_size(${this.plan.threads})
fn main(@builtin(local_invocation_id) lidv: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  ${this.prologue("NKV")}
  // First key blocks (the most queries to visit) first.
  let kvh = wid.x % NKV;
  let first = (wid.x / NKV) * BLOCK;
  let lid = lidv.x;
  ${this.rowIndices()}
  ${
      this.rowVecs((r, d) =>
        `let k${r}_${d} = ${this.read("qkv", `(b * T + r${r}) * ROW4 + (NH + kvh) * H4 + ${d}u`)} * QSCALE;`
      )
    }
  ${
      this.rowVecs((r, d) =>
        `let v${r}_${d} = ${this.read("qkv", `(b * T + r${r}) * ROW4 + (NH + NKV + kvh) * H4 + ${d}u`)};`
      )
    }
  ${this.rowVecs((r, d) => `var dk${r}_${d} = vec4<f32>(0.0);`)}
  ${this.rowVecs((r, d) => `var dv${r}_${d} = vec4<f32>(0.0);`)}
  for (var g = 0u; g < GROUP; g++) {
    let h = kvh * GROUP + g;
    let sb = (b * NH + h) * T; // row 0 of this head in lse and D
    // Queries from the block's first key on; each key masks the queries before it.
    ${
      this.streamSegments(
        "keys",
        { array: "qkv", base: "b * T * ROW4 + h * H4", stride: "ROW4" },
        { array: "dout", base: "b * T * OUT4 + h * H4", stride: "OUT4" },
        (i) =>
          this.plan.textures
            ? `fetch_stats(sb + ${i})`
            : `vec2<f32>(lse[sb + ${i}] * LOG2E, delta[sb + ${i}])`,
        body,
      )
    }
  }
  ${
      this.rows((r) =>
        `if (${this.valid(r)}) {
    ${
          each(
            H4,
            (d) =>
              `dqkv[(b * T + r${r}) * ROW4 + (NH + kvh) * H4 + ${d}u] = vec4<${gradType}>(dk${r}_${d} * SCALE);`,
            "\n    ",
          )
        }
    ${
          each(
            H4,
            (d) =>
              `dqkv[(b * T + r${r}) * ROW4 + (NH + NKV + kvh) * H4 + ${d}u] = vec4<${gradType}>(dv${r}_${d});`,
            "\n    ",
          )
        }
  }`
      )
    }
}`;
  }

  /**
   * dv{ρ}_d += p{ρ}[c]·dO[c][d] and dp{ρ}_c += v{ρ}_d·dO[c][d], in the order of
   * {@link sweep}.
   */
  accumulateDvDp(load: (c: number, d: number) => string, set = this.all): string {
    const update = (r: number, c: number, d: number, x: string) =>
      `dv${r}_${d} = fma(vec4<f32>(${
        this.comp(`p${r}`, c)
      }), ${x}, dv${r}_${d}); dp${r}_${c} = fma(v${r}_${d}, ${x}, dp${r}_${c});`;
    return this.sweep(load, update, set).join("\n      ");
  }
}
