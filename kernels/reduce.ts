/**
 * Deterministic reductions of a flat f32 buffer to one number: Σ x and Σ x², and
 * on top of them the global gradient norm that clipping and the loss scaler read
 * (`normSquared` = Σ g² over every parameter's gradient in one flat buffer).
 * These kernels overwrite their output; nothing here is a gradient kernel.
 *
 * WGSL has no float atomics, and we want the same inputs to give the same bits
 * on every run, so the order of every addition is fixed by the plan made once
 * per length n:
 *
 * 1. Stage 1: workgroup w of 256 threads owns the fixed slice of
 *    `256·ITER` vec4s starting at `w·256·ITER`. Thread t adds the squares (or
 *    values) of vec4s t, t+256, t+512, ... of that slice in a vec4 register, folds
 *    its four lanes as (x+y)+(z+w), and the workgroup folds its 256 sums in a fixed
 *    binary tree into `partials[w]`. The ≤ 3 elements past the last whole vec4 are
 *    added by thread 0 of the last workgroup before the tree.
 * 2. Stage 2: one workgroup sums the partials (thread t takes t, t+256, ...) and
 *    folds them in the same tree into `out[0]`.
 *
 * ITER is chosen so there are at most about {@link MAX_PARTIALS} partials; each
 * value then passes through about ITER + 2 + 8 + P/256 + 8 additions (≈ 60 at
 * n ≈ 125M on a GPU), so the relative error of a sum of squares stays within
 * about that many ulps.
 *
 * A binding may span at most `maxStorageBufferBindingSize` bytes (128 MiB = 32M
 * floats on lavapipe). A longer buffer is reduced in chunks, each bound as its
 * own view and dispatched separately into its own range of partials; the chunk
 * size is a whole number of slices, so chunking leaves the addition order, and
 * the result's bits, unchanged. The plan (ITER) depends on n and on whether the
 * device is a CPU fallback.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { stageReads, TEXEL_CHUNK, TEXEL_READ_MIN, texelReads } from "./texels.ts";
import { declare, expectDType, expectLength } from "./wgsl.ts";

/** Threads per workgroup of both stages. */
const WORKGROUP = 256;

/**
 * Stage 1 makes about this many partials on a GPU (one more per extra chunk at
 * most), so stage 2 is one workgroup of about 16 loads per thread while stage 1
 * has enough workgroups to fill a large GPU even at ITER = 1.
 */
export const MAX_PARTIALS = 4096;

/**
 * On a CPU fallback every workgroup costs a scheduling round trip and a barrier
 * tree: 256 longer slices measured 4x faster than 4096 short ones on lavapipe.
 */
export const MAX_PARTIALS_FALLBACK = 256;

/**
 * What a {@link Reduction} adds up: the values (Σ x) or their squares (Σ x²).
 *
 * @example
 * ```ts
 * const op: ReduceOp = "sumSquares";
 * const squares = new Reduction(gpu, x.length, { op });
 * squares.record(rec, { out, x }); // out[0] = Σ x²
 * ```
 */
export type ReduceOp = "sum" | "sumSquares";

/**
 * Options of {@link Reduction} and {@link GradNorm}: what to add up, a label,
 * and limits on the plan (for tests and tuning; the defaults suit the device).
 *
 * @example
 * ```ts
 * const options: ReductionOptions = { op: "sumSquares", label: "activation energy" };
 * const energy = new Reduction(gpu, x.length, options);
 * energy.record(rec, { out, x }); // out[0] = Σ x² over x [B, T, C]
 * ```
 */
export interface ReductionOptions {
  /** `"sum"` (Σ x) or `"sumSquares"` (Σ x²). Default `"sum"`; {@link GradNorm} always uses `"sumSquares"`. */
  op?: ReduceOp;
  /** Names the partials buffer and the pipelines. */
  label?: string;
  /**
   * Target number of stage-1 workgroups (partials); longer slices per workgroup
   * above it. Default {@link MAX_PARTIALS}, or {@link MAX_PARTIALS_FALLBACK} on a
   * CPU fallback. Part of the addition order: results are bit-identical only
   * between reductions with the same n and plan.
   */
  maxPartials?: number;
  /**
   * Largest chunk bound at once, in elements; default what the device's
   * `maxStorageBufferBindingSize` allows. Rounded down to whole slices. Tests
   * lower it to exercise chunking on small buffers.
   */
  maxChunkElements?: number;
  /**
   * Read each chunk's vec4s from a staged copy (see `texels.ts`) rather than
   * storage, in chunks of at most 2^20 elements; the same bits. Default: on a
   * software adapter, from 2^14 elements.
   */
  texels?: boolean;
}

/**
 * One chunk of a flat buffer: elements `[offset, offset + length)` reduced into
 * partials from `firstPartial`. A {@link Reduction} lists its plan's chunks in
 * {@link Reduction.chunks}, one stage-1 dispatch each.
 *
 * @example
 * ```ts
 * const reduction = new Reduction(gpu, n, { maxChunkElements: 1 << 20 });
 * for (const chunk of reduction.chunks) {
 *   const { offset, length, firstPartial, workgroups } = chunk;
 *   const last = firstPartial + workgroups - 1;
 *   console.log(`[${offset}, ${offset + length}) -> partials ${firstPartial}..${last}`);
 * }
 * ```
 */
export interface ReductionChunk {
  /** First element of the chunk. */
  offset: number;
  /** Elements in the chunk. */
  length: number;
  /** Index of the chunk's first partial. */
  firstPartial: number;
  /** Workgroups (and partials) of the chunk. */
  workgroups: number;
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

/**
 * Splits `n` elements into chunks that each fit in one storage binding, start at
 * a legal binding offset and are whole multiples of `granule` elements (except
 * the last, which takes the rest).
 *
 * @param gpu The device (for its binding size and offset alignment).
 * @param n Elements in the flat buffer.
 * @param granule Every chunk but the last is a multiple of this many elements.
 * @param maxChunkElements Optional lower cap on a chunk, in elements.
 * @returns `[offset, length]` pairs covering `[0, n)` in order.
 * @example
 * ```ts
 * for (const [offset, length] of chunkRanges(gpu, params.length, 2048)) {
 *   const view = params.view(offset, [length]);
 * }
 * ```
 */
export function chunkRanges(
  gpu: Gpu,
  n: number,
  granule: number,
  maxChunkElements = Infinity,
): [number, number][] {
  const alignElements = Math.max(1, gpu.limits.minStorageBufferOffsetAlignment / 4);
  const step = (granule / gcd(granule, alignElements)) * alignElements;
  const cap = Math.min(Math.floor(gpu.limits.maxStorageBufferBindingSize / 4), maxChunkElements);
  const chunk = Math.floor(cap / step) * step;
  if (chunk === 0) {
    throw new GpuError(
      `Cannot split ${n} elements into bindable chunks of ${step}-element multiples under a cap of ${cap} elements; ` +
        "raise maxChunkElements",
    );
  }
  const ranges: [number, number][] = [];
  for (let offset = 0; offset < n; offset += chunk) ranges.push([offset, Math.min(chunk, n - offset)]);
  return ranges;
}

/** The WGSL of the in-workgroup tree: 256 values in `scratch` to `scratch[0]`, in a fixed order. */
const WGSL_TREE = `
  workgroupBarrier();
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) { scratch[lid.x] += scratch[lid.x + stride]; }
    workgroupBarrier();
  }`;

/**
 * A deterministic Σ x or Σ x² of a flat f32 buffer of `n` elements into a
 * one-element output. Created once per length (it owns the partials buffer and
 * its plan); record it as often as needed.
 *
 * @example
 * ```ts
 * const total = new Reduction(gpu, x.length, { op: "sum" });
 * const out = gpu.tensor([1]);
 * const rec = gpu.recorder();
 * total.record(rec, { out, x });
 * rec.submit();
 * console.log((await gpu.read(out))[0]);
 * ```
 */
export class Reduction {
  /** The device. */
  readonly gpu: Gpu;
  /** Elements reduced. */
  readonly n: number;
  /** What is added up. */
  readonly op: ReduceOp;
  /** vec4s each stage-1 thread loads (the per-thread serial chain). */
  readonly iterations: number;
  /** The chunks, each one stage-1 dispatch. */
  readonly chunks: readonly ReductionChunk[];
  /** Stage-1 results, one per workgroup: (P,). */
  readonly partials: Tensor;
  /** Stage 1 reads staged copies of its chunks (see {@link ReductionOptions.texels}). */
  readonly texels: boolean;
  readonly #label: string;

  /**
   * Plans the reduction of `n` elements and allocates its partials.
   *
   * @param gpu The device.
   * @param n Elements to reduce (a positive integer).
   * @param options The op, a label and an optional chunk cap.
   */
  constructor(gpu: Gpu, n: number, options: ReductionOptions = {}) {
    this.op = options.op ?? "sum";
    this.#label = options.label ?? (this.op === "sum" ? "sum" : "sum of squares");
    if (!Number.isInteger(n) || n < 1 || n > 0xffffffff) {
      throw new GpuError(`${this.#label}: n must be an integer from 1 to 2^32-1, got ${n}`);
    }
    if (this.op !== "sum" && this.op !== "sumSquares") {
      throw new GpuError(`${this.#label}: op must be "sum" or "sumSquares", got "${this.op}"`);
    }
    this.gpu = gpu;
    this.n = n;
    const vectors = Math.ceil(n / 4);
    const maxPartials = options.maxPartials ?? (gpu.info.fallback ? MAX_PARTIALS_FALLBACK : MAX_PARTIALS);
    if (!Number.isInteger(maxPartials) || maxPartials < 1) {
      throw new GpuError(`${this.#label}: maxPartials must be a positive integer, got ${maxPartials}`);
    }
    this.iterations = Math.max(1, Math.ceil(vectors / (WORKGROUP * maxPartials)));
    const slice = 4 * WORKGROUP * this.iterations; // elements per workgroup
    this.texels = options.texels ?? (gpu.info.fallback && n >= TEXEL_READ_MIN);
    const cap = this.texels
      ? Math.min(options.maxChunkElements ?? TEXEL_CHUNK, TEXEL_CHUNK)
      : options.maxChunkElements;
    const chunks: ReductionChunk[] = [];
    let firstPartial = 0;
    for (const [offset, length] of chunkRanges(gpu, n, slice, cap)) {
      const workgroups = Math.ceil(length / slice);
      chunks.push({ offset, length, firstPartial, workgroups });
      firstPartial += workgroups;
    }
    this.chunks = chunks;
    this.partials = gpu.tensor([firstPartial], "f32", { label: `${this.#label} partials` });
  }

  /**
   * Records out[0] = Σ x (or Σ x²) over all `n` elements: one dispatch per chunk
   * and one for the partials.
   *
   * @param rec The recorder.
   * @param args `out` (f32, one element) and `x` (f32, n elements).
   */
  record(rec: Recorder, args: { out: Tensor; x: Tensor }): void {
    const { out, x } = args;
    const kernel = this.#label;
    expectDType(kernel, "out", out, ["f32"]);
    expectLength(kernel, "out", out, 1);
    expectDType(kernel, "x", x, ["f32"]);
    expectLength(kernel, "x", x, this.n);
    for (const chunk of this.chunks) this.#recordChunk(rec, x, chunk);
    this.#recordFinal(rec, out);
  }

  /** Frees the partials buffer. */
  release(): void {
    this.gpu.release(this.partials);
  }

  #recordChunk(rec: Recorder, x: Tensor, chunk: ReductionChunk): void {
    const whole = chunk.length === this.n ? x : x.view(chunk.offset, [chunk.length]);
    const vectors = Math.floor(chunk.length / 4);
    const tail = chunk.length % 4;
    // The whole vec4s from a staged copy with texels; a tail of up to 3 from storage.
    const staged = vectors > 0 && this.texels
      ? stageReads(rec, this.#label, [["x4", x.view(chunk.offset, [4 * vectors])]])
      : null;
    const decls = [];
    // An array<vec4f> binding needs at least 16 bytes, so a chunk under 4 elements binds only scalars.
    if (vectors > 0 && !staged) decls.push({ name: "x4", tensor: whole, element: "vec4<f32>" });
    if (tail > 0) decls.push({ name: "x", tensor: whole });
    decls.push({ name: "partials", tensor: this.partials, write: true });
    const { wgsl, bindings } = declare(decls);
    const reads = texelReads(staged ?? [], bindings.length);
    const term = (v: string) => this.op === "sum" ? v : `${v} * ${v}`;
    const body = vectors > 0
      ? `for (var k = 0u; k < ITER; k++) {
    let j = start + k * ${WORKGROUP}u;
    if (j < N4) { let v = ${staged ? "fetch_x4(j)" : "x4[j]"}; acc += ${term("v")}; }
  }`
      : "";
    const tailCode = tail > 0
      ? `if (w == WORKGROUPS - 1u && lid.x == 0u) {
    for (var t = 0u; t < ${tail}u; t++) { let e = x[N4 * 4u + t]; s += ${term("e")}; }
  }`
      : "";
    const code = `${wgsl}
${reads.wgsl}
const N4 = ${vectors}u;        // whole vec4s in this chunk
const ITER = ${this.iterations}u;
const WORKGROUPS = ${chunk.workgroups}u;
const FIRST = ${chunk.firstPartial}u; // this chunk's first partial
var<workgroup> scratch: array<f32, ${WORKGROUP}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let w = wid.x;
  let start = w * ${WORKGROUP}u * ITER + lid.x;
  var acc = vec4<f32>(0.0);
  ${body}
  var s = (acc.x + acc.y) + (acc.z + acc.w);
  ${tailCode}
  scratch[lid.x] = s;
  ${WGSL_TREE}
  if (lid.x == 0u) { partials[FIRST + w] = scratch[0]; }
}`;
    const label = `${this.#label} stage 1${staged ? " from texels" : ""}`;
    rec.dispatch(rec.gpu.pipelines.get(label, code), [...bindings, ...reads.views], chunk.workgroups);
  }

  #recordFinal(rec: Recorder, out: Tensor): void {
    const { wgsl, bindings } = declare([
      { name: "partials", tensor: this.partials },
      { name: "out", tensor: out, write: true },
    ]);
    const code = `${wgsl}
const P = ${this.partials.length}u;
var<workgroup> scratch: array<f32, ${WORKGROUP}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u) {
  var s = 0.0;
  for (var j = lid.x; j < P; j += ${WORKGROUP}u) { s += partials[j]; }
  scratch[lid.x] = s;
  ${WGSL_TREE}
  if (lid.x == 0u) { out[0] = scratch[0]; }
}`;
    rec.dispatch(rec.gpu.pipelines.get(`${this.#label} stage 2`, code), bindings, 1);
  }
}

/**
 * The squared global gradient norm Σ g² over the flat gradient buffer, for
 * clipping and for the loss scaler's finiteness check (an inf or NaN anywhere in
 * the gradients makes it non-finite). Deterministic: bit-identical run to run.
 *
 * @example
 * ```ts
 * const gradNorm = new GradNorm(gpu, grads.length);
 * const normSquared = gpu.tensor([1], "f32", { label: "grad norm²" });
 * gradNorm.record(rec, { out: normSquared, grads });
 * adamw.record(rec, { params, grads, m, v, decayMask, normSquared, hyper });
 * ```
 */
export class GradNorm {
  readonly #reduction: Reduction;

  /**
   * Plans the reduction for `n` gradients and allocates its partials.
   *
   * @param gpu The device.
   * @param n Number of parameters (length of the flat gradient buffer).
   * @param options A chunk cap (tests) and a label; the op is always Σ g².
   */
  constructor(gpu: Gpu, n: number, options: Omit<ReductionOptions, "op"> = {}) {
    this.#reduction = new Reduction(gpu, n, { label: "grad norm", ...options, op: "sumSquares" });
  }

  /** The underlying reduction (its plan and partials). */
  get reduction(): Reduction {
    return this.#reduction;
  }

  /**
   * Records out[0] = Σ grads[i]² (the squared norm, not the norm: AdamW takes the
   * root itself, and the trainer needs only a finiteness check).
   *
   * @param rec The recorder.
   * @param args `out` (f32, one element: normSquared) and `grads` (f32, n elements).
   */
  record(rec: Recorder, args: { out: Tensor; grads: Tensor }): void {
    expectDType("grad norm", "grads", args.grads, ["f32"]);
    expectLength("grad norm", "grads", args.grads, this.#reduction.n);
    this.#reduction.record(rec, { out: args.out, x: args.grads });
  }

  /** Frees the partials buffer. */
  release(): void {
    this.#reduction.release();
  }
}
