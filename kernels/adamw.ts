/**
 * AdamW over the flat parameter buffer, fused with gradient clipping and the
 * loss scaler's unscaling: one thread per 4 parameters (vec4 loads and stores),
 * one dispatch for all of them, plus a one-workgroup dispatch for the ≤ 3 past
 * the last whole vec4 when n is not a multiple of 4 (and a dispatch per
 * binding-sized chunk on a device that cannot bind the whole buffer). It
 * overwrites params, m and v in place and only reads the gradients (it neither
 * adds into nor clears them; the trainer zeroes grads per step).
 *
 * The update is PyTorch's `torch.optim.AdamW` (single-tensor path), with
 * g = grad · gradScale · clip and clip = min(1, maxGradNorm / (‖g‖ + 1e-6)) as in
 * `clip_grad_norm_`, where ‖g‖ = √normSquared · gradScale (the norm of the
 * unscaled gradients, from {@link GradNorm}):
 *
 * ```
 * p ← p·(1 − lr·wd)                 (only where the decay mask bit is set)
 * m ← β1·m + (1 − β1)·g
 * v ← β2·v + (1 − β2)·g²
 * p ← p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + eps)
 * ```
 *
 * If normSquared or the norm is inf or NaN the kernel changes nothing (a skipped
 * step); the trainer reads the norm back to notice and to lower its loss scale.
 *
 * On a software adapter the vec4 kernel reads grads, params, m and v from staged
 * texture copies (see {@link AdamW.texels}) and writes storage as everywhere else.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import { chunkRanges } from "./reduce.ts";
import { grid, type Recorder, WGSL_LINEAR_WORKGROUP } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { stageReads, TEXEL_CHUNK, texelReads } from "./texels.ts";
import { declare, expectDType, expectLength } from "./wgsl.ts";

const WORKGROUP = 256;
/** Chunks start on a mask word whose byte offset is binding-aligned; 2048 elements = 256 bytes of mask. */
const CHUNK_GRANULE = 2048;
/** Bytes of the uniform struct `Hyper` (12 f32, a multiple of 16). */
const HYPER_BYTES = 48;
/** The tensors AdamW reads, in the order their staged textures are bound. */
const READ = ["grads", "params", "m", "v"] as const;

/**
 * Hyperparameters of one AdamW step, passed to every {@link AdamW.record}: they
 * may change per step (a learning-rate schedule) without recompiling, and the GPU
 * reads them at submit time.
 *
 * @example
 * ```ts
 * const hyper: AdamWHyper = {
 *   lr: 6e-4 * Math.min(1, step / 100), // warmup
 *   beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, maxGradNorm: 1, step,
 * };
 * adamw.record(rec, { params, grads, m, v, decayMask, normSquared, hyper });
 * ```
 */
export interface AdamWHyper {
  /** Learning rate for this step (after any schedule). */
  lr: number;
  /** First-moment decay β1, in [0, 1). */
  beta1: number;
  /** Second-moment decay β2, in [0, 1). */
  beta2: number;
  /** Added to √v̂; positive. */
  eps: number;
  /** Decoupled weight decay λ (applied as p·(1 − lr·λ) where the mask says so). */
  weightDecay: number;
  /** Clip the global norm to this; 0 or Infinity: no clipping. */
  maxGradNorm: number;
  /** Step number t, counting from 1 (for the bias corrections). */
  step: number;
  /** Multiplies the stored gradients first: 1/lossScale when they were scaled. Default 1. */
  gradScale?: number;
}

/**
 * A range of the flat parameter buffer and whether weight decay applies to it,
 * as {@link buildDecayMask} takes them.
 *
 * @example
 * ```ts
 * const ranges: DecayRange[] = [
 *   { offset: 0, length: 768, decay: true }, // a weight matrix
 *   { offset: 768, length: 32, decay: false }, // a norm gain
 * ];
 * const decayMask = gpu.tensor([25], "u32", { data: buildDecayMask(800, ranges) }); // ⌈800 / 32⌉ words
 * ```
 */
export interface DecayRange {
  /** First parameter of the range in the flat buffer. */
  offset: number;
  /** Parameters in the range. */
  length: number;
  /** Whether weight decay applies (matrices: yes; norm gains: no). */
  decay: boolean;
}

/**
 * Packs per-parameter decay flags into u32 words: parameter i decays when bit
 * i % 32 of word ⌊i / 32⌋ is set. Parameters in no range do not decay.
 *
 * @param n Number of parameters.
 * @param ranges Disjoint ranges inside [0, n).
 * @returns ⌈n / 32⌉ words, ready for `gpu.tensor([words.length], "u32", { data })`.
 * @example
 * ```ts
 * const words = buildDecayMask(1000, [
 *   { offset: 0, length: 768, decay: true },
 *   { offset: 768, length: 232, decay: false },
 * ]);
 * const decayMask = gpu.tensor([words.length], "u32", { label: "decay mask", data: words });
 * ```
 */
export function buildDecayMask(n: number, ranges: readonly DecayRange[]): Uint32Array {
  if (!Number.isInteger(n) || n < 0) throw new GpuError(`buildDecayMask: n must be a whole number, got ${n}`);
  const words = new Uint32Array(Math.ceil(n / 32));
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  let end = 0;
  for (const { offset, length, decay } of sorted) {
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0) {
      throw new GpuError(`buildDecayMask: range at ${offset} of length ${length} is not whole numbers`);
    }
    if (offset + length > n) {
      throw new GpuError(`buildDecayMask: range [${offset}, ${offset + length}) runs past n = ${n}`);
    }
    if (offset < end) {
      throw new GpuError(`buildDecayMask: range at ${offset} overlaps the one ending at ${end}`);
    }
    end = offset + length;
    if (!decay) continue;
    for (let i = offset; i < end; i++) words[i >>> 5] |= 1 << (i & 31);
  }
  return words;
}

/**
 * Number of u32 words in the decay mask of `n` parameters.
 *
 * @param n Number of parameters.
 * @returns ⌈n / 32⌉.
 */
export function decayMaskWords(n: number): number {
  return Math.ceil(n / 32);
}

/**
 * The AdamW optimizer over one flat f32 parameter buffer of `n` elements. Created
 * once per run; it owns a 48-byte uniform buffer of hyperparameters.
 *
 * {@link AdamW.record} writes that buffer with `queue.writeBuffer`, whose data the
 * GPU sees at the next `queue.submit`: the values in force are those of the last
 * `record` before the submit, so record **at most one AdamW update per submit**
 * (one training step per command buffer, as the trainer does). Recording it
 * twice into one recorder with different values throws.
 *
 * @example
 * ```ts
 * const adamw = new AdamW(gpu, n);
 * const rec = gpu.recorder();
 * gradNorm.record(rec, { out: normSquared, grads });
 * adamw.record(rec, {
 *   params, grads, m, v, decayMask, normSquared,
 *   hyper: { lr: 6e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, maxGradNorm: 1, step },
 * });
 * rec.submit();
 * ```
 */
export class AdamW {
  /** The device. */
  readonly gpu: Gpu;
  /** Number of parameters. */
  readonly n: number;
  /** Parameters per thread: 4 (vec4 loads and stores) or 1. */
  readonly width: 1 | 4;
  /**
   * Whether the vec4 kernel reads grads, params, m and v by texel fetches from
   * staged copies (software adapters, where a storage load is a loop over the
   * SIMD lanes and a store is not; see `texels.ts`) rather than from storage.
   */
  readonly texels: boolean;
  /** The uniform buffer of per-step values. */
  readonly uniforms: GPUBuffer;
  readonly #chunks: [number, number][];
  #lastRecorder: WeakRef<Recorder> | null = null;
  #lastValues = new Float32Array(HYPER_BYTES / 4);

  /**
   * Prepares AdamW for `n` parameters.
   *
   * @param gpu The device.
   * @param n Parameters in the flat buffer (positive integer).
   * @param options `maxChunkElements` caps a chunk below the binding limit (tests
   *   exercise chunking with it); `width` 1 makes one thread per parameter (the
   *   naive layout, for the bench) instead of one per 4; `texels` overrides the
   *   choice of {@link AdamW.texels} (default: on a software adapter, at width 4),
   *   and caps chunks at 2^20 parameters when on.
   */
  constructor(
    gpu: Gpu,
    n: number,
    options: { maxChunkElements?: number; width?: 1 | 4; texels?: boolean } = {},
  ) {
    if (!Number.isInteger(n) || n < 1 || n > 0xffffffff) {
      throw new GpuError(`adamw: n must be an integer from 1 to 2^32-1, got ${n}`);
    }
    this.gpu = gpu;
    this.n = n;
    this.width = options.width ?? 4;
    if (this.width !== 1 && this.width !== 4) {
      throw new GpuError(`adamw: width must be 1 or 4, got ${this.width}`);
    }
    this.texels = this.width === 4 && (options.texels ?? gpu.info.fallback);
    const cap = this.texels
      ? Math.min(options.maxChunkElements ?? TEXEL_CHUNK, TEXEL_CHUNK)
      : options.maxChunkElements;
    this.#chunks = chunkRanges(gpu, n, CHUNK_GRANULE, cap);
    this.uniforms = gpu.createBuffer(
      "adamw hyper",
      HYPER_BYTES,
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
  }

  /**
   * Writes this step's hyperparameters and records the update of all `n`
   * parameters (one dispatch per chunk; one in all on a device that binds the
   * whole buffer).
   *
   * @param rec The recorder (submit it before the next `record`).
   * @param args `params`, `m`, `v` (f32, n; updated in place), `grads` (f32, n),
   *   `decayMask` (u32, ⌈n/32⌉ words from {@link buildDecayMask}), `normSquared`
   *   (f32, 1: Σ grads² from {@link GradNorm}), the step's `hyper`, and optionally
   *   `lossScale` (f32, 1, on the GPU: a dynamic loss scale the stored gradients
   *   carry, divided out together with `hyper.gradScale`).
   */
  record(
    rec: Recorder,
    args: {
      params: Tensor;
      grads: Tensor;
      m: Tensor;
      v: Tensor;
      decayMask: Tensor;
      normSquared: Tensor;
      hyper: AdamWHyper;
      lossScale?: Tensor;
    },
  ): void {
    const { params, grads, m, v, decayMask, normSquared, hyper, lossScale } = args;
    for (const [name, t] of [["params", params], ["grads", grads], ["m", m], ["v", v]] as const) {
      expectDType("adamw", name, t, ["f32"]);
      expectLength("adamw", name, t, this.n);
    }
    expectDType("adamw", "decayMask", decayMask, ["u32"]);
    expectLength("adamw", "decayMask", decayMask, decayMaskWords(this.n));
    expectDType("adamw", "normSquared", normSquared, ["f32"]);
    expectLength("adamw", "normSquared", normSquared, 1);
    if (lossScale) {
      expectDType("adamw", "lossScale", lossScale, ["f32"]);
      expectLength("adamw", "lossScale", lossScale, 1);
    }
    const values = hyperUniforms(hyper);
    if (this.#lastRecorder?.deref() === rec && values.some((x, i) => x !== this.#lastValues[i])) {
      throw new GpuError(
        "adamw: recorded twice into one recorder with different hyper values; both would use the second's: " +
          "submit between steps",
      );
    }
    this.gpu.queue.writeBuffer(this.uniforms, 0, values);
    this.#lastRecorder = new WeakRef(rec);
    this.#lastValues = values;
    for (const [offset, length] of this.#chunks) {
      const view = (t: Tensor) => length === this.n ? t : t.view(offset, [length]);
      const chunk = {
        grads: view(grads),
        params: view(params),
        m: view(m),
        v: view(v),
        decayMask,
        normSquared,
        lossScale,
      };
      const vectors = this.width === 4 ? Math.floor(length / 4) : 0;
      // An array<vec4f> binding needs ≥ 16 bytes: a chunk under 4 elements is all tail.
      if (vectors > 0) this.#dispatch(rec, chunk, { width: 4, first: 0, count: vectors, offset });
      const rest = length - 4 * vectors;
      if (rest > 0) this.#dispatch(rec, chunk, { width: 1, first: 4 * vectors, count: rest, offset });
    }
  }

  #dispatch(
    rec: Recorder,
    t: Record<"grads" | "params" | "m" | "v" | "decayMask" | "normSquared", Tensor> & { lossScale?: Tensor },
    plan: { width: 1 | 4; first: number; count: number; offset: number },
  ): void {
    const element = plan.width === 4 ? "vec4<f32>" : "f32";
    // The chunk's whole vec4s, staged; its tail (width 1) reads storage.
    const staged = plan.width === 4 && this.texels
      ? stageReads(rec, "adamw", READ.map((name) => [name, t[name].view(0, [4 * plan.count])] as const))
      : null;
    const texels = staged !== null;
    const declared = declare([
      ...(texels ? [] : [{ name: "grads", tensor: t.grads, element }]),
      { name: "decayMask", tensor: t.decayMask },
      { name: "normSquared", tensor: t.normSquared },
      ...(t.lossScale ? [{ name: "lossScale", tensor: t.lossScale }] : []),
      { name: "params", tensor: t.params, write: true, element },
      { name: "m", tensor: t.m, write: true, element },
      { name: "v", tensor: t.v, write: true, element },
    ], ["hyper", "Hyper", this.uniforms]);
    const reads = texelReads(staged ?? [], declared.bindings.length);
    // read_{name}(j): from the staged copy, or from storage.
    const accessors = READ.map((name) =>
      `fn read_${name}(j: u32) -> ${element} { return ${texels ? `fetch_${name}(j)` : `${name}[j]`}; }`
    );
    const wgsl = [declared.wgsl, reads.wgsl, ...accessors].join("\n");
    const bindings = [...declared.bindings, ...reads.views];
    const label = plan.width === 4 ? (texels ? "adamw vec4 texels" : "adamw vec4") : "adamw";
    rec.dispatch(
      rec.gpu.pipelines.get(label, adamwWgsl(wgsl, { ...plan, lossScale: t.lossScale !== undefined })),
      bindings,
      grid(rec.gpu, Math.ceil(plan.count / WORKGROUP)),
    );
  }

  /** Frees the uniform buffer. */
  release(): void {
    this.gpu.bindGroups.forget(this.uniforms);
    this.uniforms.destroy();
  }
}

/**
 * Validates `hyper` and packs the struct `Hyper` with the bias corrections
 * computed in float64 (rounded to f32 once, when stored).
 */
function hyperUniforms(hyper: AdamWHyper): Float32Array<ArrayBuffer> {
  const { lr, beta1, beta2, eps, weightDecay, maxGradNorm, step } = hyper;
  const gradScale = hyper.gradScale ?? 1;
  const check = (name: string, value: number, ok: boolean, want: string) => {
    if (!ok) throw new GpuError(`adamw: hyper.${name} is ${value}; it must be ${want}`);
  };
  check("lr", lr, Number.isFinite(lr) && lr >= 0, "finite and ≥ 0");
  check("beta1", beta1, beta1 >= 0 && beta1 < 1, "in [0, 1)");
  check("beta2", beta2, beta2 >= 0 && beta2 < 1, "in [0, 1)");
  check("eps", eps, Number.isFinite(eps) && eps > 0, "finite and > 0");
  check("weightDecay", weightDecay, Number.isFinite(weightDecay) && weightDecay >= 0, "finite and ≥ 0");
  check("maxGradNorm", maxGradNorm, maxGradNorm >= 0, "≥ 0 (0 or Infinity: no clipping)");
  check("step", step, Number.isInteger(step) && step >= 1, "an integer ≥ 1");
  check("gradScale", gradScale, Number.isFinite(gradScale) && gradScale > 0, "finite and > 0");
  const biasCorrection1 = 1 - beta1 ** step;
  const biasCorrection2 = 1 - beta2 ** step;
  return new Float32Array([
    lr / biasCorrection1, // stepSize
    1 - lr * weightDecay, // decayFactor
    beta1,
    1 - beta1,
    beta2,
    1 - beta2,
    Math.sqrt(biasCorrection2),
    eps,
    Number.isFinite(maxGradNorm) ? maxGradNorm : 0, // 0: no clipping
    gradScale,
    0,
    0,
  ]);
}

/**
 * The kernel over `count` items of the bound chunk views from element `first`:
 * vec4s of 4 parameters (width 4, `first` = 0) or single parameters (width 1: the
 * naive layout, and the ≤ 3 elements past a chunk's last vec4). `offset` is the
 * chunk's first parameter in the flat buffer, for the decay mask (bound whole).
 */
function adamwWgsl(
  declarations: string,
  plan: { width: 1 | 4; first: number; count: number; offset: number; lossScale: boolean },
): string {
  // A vec4 starts at a multiple of 4 (chunks start at multiples of 2048), so its 4
  // mask bits sit in one word.
  const decay = plan.width === 4
    ? `let bits = (decayMask[k >> 5u] >> (k & 31u)) & 15u;
  let decays = (vec4<u32>(bits) & vec4<u32>(1u, 2u, 4u, 8u)) != vec4<u32>(0u);
  let p = read_params(j) * select(vec4<f32>(1.0), vec4<f32>(hyper.decayFactor), decays);`
    : `let decays = ((decayMask[k >> 5u] >> (k & 31u)) & 1u) != 0u;
  let p = read_params(j) * select(1.0, hyper.decayFactor, decays);`;
  return `struct Hyper {
  stepSize: f32,     // lr / (1 - beta1^t)
  decayFactor: f32,  // 1 - lr * weightDecay
  beta1: f32,
  oneMinusBeta1: f32,
  beta2: f32,
  oneMinusBeta2: f32,
  sqrtBc2: f32,      // sqrt(1 - beta2^t)
  eps: f32,
  maxGradNorm: f32,  // 0: no clipping
  gradScale: f32,
  pad0: f32,
  pad1: f32,
}
${declarations}
const COUNT = ${plan.count}u;   // ${plan.width === 4 ? "vec4s" : "parameters"} handled by this dispatch
const FIRST = ${plan.first}u;   // index of the first one in the bound arrays
const OFFSET = ${plan.offset}u; // the chunk's first parameter in the flat buffer (for the mask)

// Exponent all ones: inf or NaN. A bit test, because WGSL lets compilers assume
// float arithmetic never yields them, which could fold away x != x.
fn isFinite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WGSL_LINEAR_WORKGROUP} * ${WORKGROUP}u + lid.x;
  if (i >= COUNT) { return; }
  let normSq = normSquared[0];
  let unscale = ${plan.lossScale ? "hyper.gradScale / lossScale[0]" : "hyper.gradScale"};
  let norm = sqrt(normSq) * unscale;
  if (!isFinite(normSq) || !isFinite(norm)) { return; } // skipped step
  var gscale = unscale;
  if (hyper.maxGradNorm > 0.0) {
    gscale *= min(1.0, hyper.maxGradNorm / (norm + 1e-6));
  }
  let j = FIRST + i;                // index in the bound arrays
  let k = OFFSET + ${plan.width}u * j; // first parameter's index in the flat buffer
  let g = read_grads(j) * gscale;
  ${decay}
  let mi = hyper.beta1 * read_m(j) + hyper.oneMinusBeta1 * g;
  let vi = hyper.beta2 * read_v(j) + hyper.oneMinusBeta2 * (g * g);
  m[j] = mi;
  v[j] = vi;
  params[j] = p - hyper.stepSize * (mi / (sqrt(vi) / hyper.sqrtBc2 + hyper.eps));
}`;
}
