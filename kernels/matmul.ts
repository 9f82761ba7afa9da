/**
 * Matrix multiplication, the bulk of a transformer's FLOPs:
 * out = op(a)·op(b), or out += op(a)·op(b) with `accumulate`, where op is an
 * optional transpose. Forward y = x·Wᵀ uses `transposeB` (W in Hugging Face
 * `[out_features, in_features]` layout); backward dx = dy·W is the plain form
 * and dW += dyᵀ·x is `transposeA` with `accumulate`. The kernels overwrite `out`
 * unless `accumulate` is set, in which case they add into it (+=): parameter
 * gradients pass `accumulate: true`, activation gradients usually do not.
 *
 * Each form has its own kernel (no explicit transposes): a workgroup computes a
 * BM×BN tile of `out`, staging BK-deep slabs of both operands in workgroup
 * memory in their global layout, so every load from storage is a contiguous
 * vec4 when the contiguous dimension is a multiple of 4 (scalar loads assemble
 * the same vec4 otherwise). Each thread keeps a TM×TN block of f32 accumulators
 * in registers. The block is unrolled in the generated WGSL: accumulators are
 * plain variables, and every workgroup-memory index is a per-thread base plus a
 * constant or the counter of a loop with a constant trip count (4 k values per
 * trip), so wgpu's bounds clamps fold away once the compiler unrolls it. Sizes are
 * baked as constants; a bounds test is emitted only for a dimension that is not a
 * multiple of its tile, once per loaded vec4 and per stored row or column.
 * Workgroups walk the output in groups of 8 tile rows so that slabs are reused
 * from cache. The blocking ({@link MATMUL_TILES}) depends on the adapter and size,
 * unless `tuneKernels` (`tune.ts`) measured a faster one for the product on
 * this device.
 * `matmul_tiled.ts` generates this kernel; software adapters take the texel
 * kernel of `matmul_texel.ts` instead.
 *
 * f16 operands are loaded as f16 (vec4<f16> where aligned) and widened to f32 in
 * workgroup memory; accumulation is f32, `out` may be f32 or f16. A tile with
 * `f16Sums` keeps f16 in workgroup memory and sums each slab's products in f16
 * before adding them to the f32 accumulators, one with `prefetch` loads the
 * next slab into registers during this slab's FMAs, and one with `splitK` gives
 * ranges of K workgroups of their own (options to measure on GPUs).
 *
 * Sizes: a is [M, K] ([K, M] with transposeA), b is [K, N] ([N, K] with
 * transposeB), out is [M, N]; a batched call gives all three a leading BATCH
 * dimension, and a or b may omit it to be shared across the batch.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import type { Recorder } from "./recorder.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "./recorder.ts";
import { Tensor } from "./tensor.ts";
import { TEXEL_LANES, texelMatmul, texelMatmulFits, type TexelTile, texelTile } from "./matmul_texel.ts";
import { blockingName, productLabel, tiledMatmul } from "./matmul_tiled.ts";
import { noteCall, tunedChoice } from "./tuning_state.ts";
import { expectLoopTrips } from "./selftest.ts";
import { declare, expectDType, expectF16Support, expectShape } from "./wgsl.ts";

/**
 * Arguments of {@link matmul} and {@link matmulNaive}: the output, the two
 * operands, and how to combine them (transposes, accumulation, a tile override).
 *
 * @example
 * ```ts
 * // dW += dyᵀ·x: dy [N, OUT], x [N, C] -> dW [OUT, C], a parameter gradient
 * const args: MatmulArgs = { out: dweight, a: dy, b: x, transposeA: true, accumulate: true };
 * matmul(rec, args);
 * ```
 */
export interface MatmulArgs {
  /** [M, N] or [BATCH, M, N], f32 or f16; overwritten, or added into with `accumulate`. */
  out: Tensor;
  /** [M, K] ([K, M] with `transposeA`), optionally with a leading BATCH dimension; f32 or f16. */
  a: Tensor;
  /** [K, N] ([N, K] with `transposeB`), optionally with a leading BATCH dimension; f32 or f16. */
  b: Tensor;
  /** Multiply by aᵀ: a is stored [K, M]. */
  transposeA?: boolean;
  /** Multiply by bᵀ: b is stored [N, K] (a weight in `[out_features, in_features]` layout). */
  transposeB?: boolean;
  /** out += product instead of out = product. */
  accumulate?: boolean;
  /** Overrides the tile shape {@link matmul} picks (for benchmarks and tuning); ignored by the naive kernel. */
  tile?: MatmulTile;
  /**
   * Runs the texel-fetch kernel (true, or a {@link TexelTile} to force its blocking)
   * or the tiled one (false). By default software adapters take the texel kernel
   * when the shapes allow it, GPUs the tiled one.
   */
  texel?: boolean | TexelTile;
}

/**
 * The blocking of the tiled kernel: a workgroup computes a `bm`×`bn` tile of the
 * output in `bk`-deep steps, each of its (bm/tm)·(bn/tn) threads a `tm`×`tn` block.
 * Pass one as `tile` to benchmark or tune a blocking other than the one chosen.
 *
 * @example
 * ```ts
 * // 64×32 tiles, 8×4 outputs for each of 64 threads, 6.5 KiB of workgroup memory
 * const tile: MatmulTile = { bm: 64, bn: 32, bk: 16, tm: 8, tn: 4 };
 * matmul(rec, { out: y, a: x, b: weight, transposeB: true, tile });
 * ```
 */
export interface MatmulTile {
  /** Output rows per workgroup. */
  bm: number;
  /** Output columns per workgroup. */
  bn: number;
  /** Depth of one step along K (a multiple of 4). */
  bk: number;
  /** Output rows per thread (a multiple of 4). */
  tm: number;
  /** Output columns per thread (a multiple of 4). */
  tn: number;
  /**
   * Multiply in f16 (a and b must be f16): workgroup memory holds f16, and each
   * bk-deep slab's products are summed in f16 before they are added to the f32
   * accumulators. Half the workgroup memory, and twice the FMA rate on GPUs that
   * pack f16 pairs, at the precision of a bk-term f16 sum. Default false.
   */
  f16Sums?: boolean;
  /**
   * Issue the loads of the next slab into registers before the FMAs of this one,
   * so their latency overlaps the arithmetic (GPUs running too few workgroups to
   * hide it otherwise); costs a register per vec4 a thread moves. Default false.
   */
  prefetch?: boolean;
  /**
   * Split K into this many ranges, a workgroup each (default 1): for products with
   * too few output tiles to fill a GPU. Each range writes its partial product to a
   * scratch buffer, and a second dispatch adds them up in order (and into `out`
   * with `accumulate`).
   */
  splitK?: number;
}

/**
 * The blockings {@link matmul} chooses from (all within 16 KiB of workgroup memory
 * and 256 threads):
 * - `large`: 64×64 tiles, 16 deep, 8×8 outputs per thread (64 threads, 9 KiB):
 *   16 workgroup-memory loads per 64 FMAs, registers a GPU thread can hold.
 * - `small`: 32×32 tiles, 4×4 per thread, for outputs too small to give a GPU
 *   enough 64×64 tiles; also the cheapest to compile.
 * - `cpu`: 128×128 tiles, 8 deep, 16×16 per thread (64 threads, 10 KiB), for
 *   software adapters: there every load from workgroup or storage memory costs
 *   a loop over the SIMD lanes, so outputs per load is what counts, and spilled
 *   accumulators are cheap. On a GPU this many accumulators would spill.
 */
export const MATMUL_TILES: Readonly<Record<"large" | "small" | "cpu", Readonly<MatmulTile>>> = Object.freeze({
  large: Object.freeze({ bm: 64, bn: 64, bk: 16, tm: 8, tn: 8 }),
  small: Object.freeze({ bm: 32, bn: 32, bk: 16, tm: 4, tn: 4 }),
  cpu: Object.freeze({ bm: 128, bn: 128, bk: 8, tm: 16, tn: 16 }),
});

/**
 * The blocking {@link matmul} uses for a product of `batch`×`m`×`n`×`k`. On a GPU:
 * `large` once there are enough 64×64 tiles to occupy most multiprocessors, else
 * `small`. On a software adapter: `cpu` when the product is big enough to repay its
 * compile time (about 2 s) and gives more than one core a tile, else `large` or `small`.
 *
 * @param gpu The device (software adapters get other blockings).
 * @param size The product: output rows `m`, columns `n`, inner size `k`, `batch` entries (default 1).
 * @returns One of {@link MATMUL_TILES}.
 * @example
 * ```ts
 * const tile = chooseMatmulTile(gpu, { m: 1024, n: 1152, k: 384 }); // MATMUL_TILES.large on a GPU
 * ```
 */
export function chooseMatmulTile(
  gpu: Gpu,
  size: { m: number; n: number; k: number; batch?: number },
): Readonly<MatmulTile> {
  const { m, n, k, batch = 1 } = size;
  const tiles = (t: MatmulTile) => batch * Math.ceil(m / t.bm) * Math.ceil(n / t.bn);
  const { large, small, cpu } = MATMUL_TILES;
  if (!gpu.info.fallback) return tiles(large) >= 128 ? large : small;
  if (batch * m * n * k >= 1 << 24 && tiles(cpu) >= 2) return cpu;
  return tiles(large) >= 4 ? large : small;
}

/**
 * How one product is computed: a blocking of the tiled kernel, or of the texel
 * kernel (software adapters). What kernel tuning (`tune.ts`) chooses among:
 * every choice it offers sums each output's products in the same order, so all
 * give the same bits; only their speed differs.
 *
 * @example
 * ```ts
 * const onGpu: MatmulChoice = { tile: { bm: 128, bn: 64, bk: 16, tm: 8, tn: 8 } };
 * const onCpu: MatmulChoice = { texel: { rows: 8, quads: 4 } };
 * ```
 */
export type MatmulChoice = { readonly tile: Readonly<MatmulTile> } | { readonly texel: Readonly<TexelTile> };

/**
 * A validated call: sizes, layouts and dtypes, everything the WGSL bakes in (what
 * tuning candidates are chosen for).
 *
 * @example
 * ```ts
 * const candidates = matmulCandidates(gpu, problem, false); // problem.m, .n, .k, ...
 * ```
 */
export interface MatmulProblem {
  /** Products in the batch (1 unbatched). */
  batch: number;
  /** Rows of out. */
  m: number;
  /** Columns of out. */
  n: number;
  /** The inner size. */
  k: number;
  /** a is stored [K, M]. */
  transposeA: boolean;
  /** b is stored [N, K]. */
  transposeB: boolean;
  /** out += product. */
  accumulate: boolean;
  /** Elements between consecutive batch entries of a (0 when shared). */
  aStride: number;
  /** Elements between consecutive batch entries of b (0 when shared). */
  bStride: number;
  /** The first operand. */
  a: Tensor;
  /** The second operand. */
  b: Tensor;
  /** The output. */
  out: Tensor;
}

/**
 * out = op(a)·op(b) (or out += with `accumulate`) with the tiled kernel, f32
 * accumulation, for any M, N, K and any mix of f32 and f16 tensors.
 *
 * @param rec The recorder.
 * @param args `out`, `a`, `b`, the transposes and `accumulate` (see {@link MatmulArgs}).
 * @throws {GpuError} On shapes that do not chain, dtypes other than f32/f16, f16 without
 *   device support, or `out` overlapping an input.
 * @example
 * ```ts
 * // y = x·Wᵀ: x [N, C], W [OUT, C] -> y [N, OUT]
 * matmul(rec, { out: y, a: x, b: weight, transposeB: true });
 * // backward: dx = dy·W, dW += dyᵀ·x
 * matmul(rec, { out: dx, a: dy, b: weight });
 * matmul(rec, { out: dweight, a: dy, b: x, transposeA: true, accumulate: true });
 * ```
 */
export function matmul(rec: Recorder, args: MatmulArgs): void {
  const p = validate("matmul", rec.gpu, args);
  const fix = `split the product along K (${p.k})`;
  const texel = usesTexelKernel(rec.gpu, p, args);
  if (!overridden(args)) noteCall(rec, problemKey(p, texel), { kind: "matmul", problem: p, texel });
  const kernel = kernelOf(rec.gpu, p, args, texel);
  if ("texel" in kernel) {
    expectLoopTrips(rec.gpu, "matmul", Math.ceil(p.k / 4) + 1, fix);
    return texelMatmul(rec, p, kernel.texel);
  }
  tiledMatmul(rec, p, kernel.tile, fix);
}

/**
 * Which kernel {@link matmul} runs for `args` on `gpu`: `"texel"` (software
 * adapters, see `matmul_texel.ts`) or the tiled kernel's blocking, e.g.
 * `"tiled 64x64x16/8x8"`. For benchmark labels and tuning.
 *
 * @param gpu The device.
 * @param args The call, as for {@link matmul}.
 * @returns A short description of the kernel and its blocking.
 * @throws {GpuError} As {@link matmul}.
 * @example
 * ```ts
 * console.log(matmulKernel(gpu, { out: y, a: x, b: weight, transposeB: true })); // "tiled 64x64x16/8x8" on a GPU
 * ```
 */
export function matmulKernel(gpu: Gpu, args: MatmulArgs): string {
  const p = validate("matmul", gpu, args);
  const kernel = kernelOf(gpu, p, args, usesTexelKernel(gpu, p, args));
  if ("texel" in kernel) return `texel ${kernel.texel.rows}x${4 * TEXEL_LANES * kernel.texel.quads}`;
  return `tiled${blockingName(kernel.tile)}`;
}

/**
 * The key products are tuned under: form, dtypes, sizes, batch strides and the
 * kernel family `matmul` routes them to by default (which also depends on how
 * the operands' views align), so a choice never crosses families.
 */
function problemKey(p: MatmulProblem, texel: boolean): string {
  const form = `${p.transposeA ? "Aᵀ" : "A"}·${p.transposeB ? "Bᵀ" : "B"}${p.accumulate ? " +=" : ""}`;
  return `matmul ${texel ? "texel" : "tiled"} ${form} ${p.a.dtype}·${p.b.dtype}->${p.out.dtype} ` +
    `${p.batch}x${p.m}x${p.n}x${p.k} strides ${p.aStride},${p.bStride}`;
}

/** Whether the call forces a kernel or blocking (then tuning neither notes nor changes it). */
function overridden(args: MatmulArgs): boolean {
  return args.tile !== undefined || args.texel !== undefined;
}

/** The kernel and blocking of a call: forced by its arguments, else tuned on this device, else the default. */
function kernelOf(gpu: Gpu, p: MatmulProblem, args: MatmulArgs, texel: boolean): MatmulChoice {
  const tuned = overridden(args) ? undefined : tunedChoice<MatmulChoice>(gpu, problemKey(p, texel));
  if (texel) {
    if (typeof args.texel === "object") return { texel: args.texel };
    return tuned && "texel" in tuned ? tuned : { texel: texelTile(p) };
  }
  if (args.tile) return { tile: args.tile };
  return tuned && "tile" in tuned ? tuned : { tile: chooseMatmulTile(gpu, p) };
}

/** Software adapters take the texel kernel unless a tile is forced or the shapes do not fit it. */
function usesTexelKernel(gpu: Gpu, p: MatmulProblem, args: MatmulArgs): boolean {
  const fits = texelMatmulFits(gpu, p);
  if (args.texel && !fits) {
    throw new GpuError(
      `matmul: the texel kernel needs operands that fit a texture, texel-aligned views, and no batch ` +
        `when K or a row (${p.transposeA ? "M" : "K"} of a, ${p.transposeB ? "K" : "N"} of b) is not a ` +
        `multiple of 4; got batch=${p.batch} M=${p.m} N=${p.n} K=${p.k}; leave texel unset`,
    );
  }
  if (args.texel !== undefined) return args.texel !== false;
  return gpu.info.fallback && args.tile === undefined && fits;
}

/**
 * The same product with one thread per output and no workgroup memory: the
 * baseline of the benchmark and an independent cross-check in tests.
 *
 * @param rec The recorder.
 * @param args As for {@link matmul} (`tile` is ignored).
 * @throws {GpuError} As {@link matmul}.
 * @example
 * ```ts
 * matmulNaive(rec, { out, a, b, transposeB: true });
 * ```
 */
export function matmulNaive(rec: Recorder, args: MatmulArgs): void {
  const p = validate("matmulNaive", rec.gpu, args);
  const total = p.batch * p.m * p.n;
  if (total === 0) return;
  const { wgsl, bindings } = declare([
    { name: "a", tensor: p.a },
    { name: "b", tensor: p.b },
    { name: "out", tensor: p.out, write: true },
  ]);
  const pipeline = rec.gpu.pipelines.get(productLabel("matmul naive", p, null), wgsl + naiveKernel(p));
  rec.dispatch(pipeline, bindings, grid(rec.gpu, Math.ceil(total / NAIVE_WORKGROUP)));
}

// ---------------------------------------------------------------------------------------------
// Validation

function validate(kernel: string, gpu: Gpu, args: MatmulArgs): MatmulProblem {
  const { out, a, b } = args;
  const transposeA = args.transposeA ?? false;
  const transposeB = args.transposeB ?? false;
  for (const [name, t] of [["out", out], ["a", a], ["b", b]] as const) {
    expectDType(kernel, name, t, ["f32", "f16"]);
    if (t.shape.length !== 2 && t.shape.length !== 3) {
      throw new GpuError(
        `${kernel}: ${name} "${t.label}" has shape [${t.shape.join(", ")}], expected 2 dimensions ` +
          "(or 3 with a leading batch dimension)",
      );
    }
  }
  expectF16Support(kernel, gpu.features.f16, [out, a, b]);
  const batched = out.shape.length === 3;
  const batch = batched ? out.shape[0] : 1;
  const aBatched = a.shape.length === 3;
  const bBatched = b.shape.length === 3;
  if (!batched && (aBatched || bBatched)) {
    throw new GpuError(
      `${kernel}: out "${out.label}" has shape [${out.shape.join(", ")}] but ${aBatched ? "a" : "b"} ` +
        "is batched; give out a leading batch dimension",
    );
  }
  const [ar, ac] = a.shape.slice(-2);
  const [m, k] = transposeA ? [ac, ar] : [ar, ac];
  const n = transposeB ? b.shape.at(-2)! : b.shape.at(-1)!;
  const lead = (on: boolean) => (on ? [batch] : []);
  expectShape(kernel, "b", b, [...lead(bBatched), ...(transposeB ? [n, k] : [k, n])]);
  if (aBatched) expectShape(kernel, "a", a, [batch, ...a.shape.slice(-2)]);
  expectShape(kernel, "out", out, [...lead(batched), m, n]);
  for (const [name, t] of [["a", a], ["b", b]] as const) {
    const lo = Math.max(t.byteOffset, out.byteOffset);
    const hi = Math.min(t.byteOffset + t.byteLength, out.byteOffset + out.byteLength);
    if (t.buffer === out.buffer && lo < hi) {
      throw new GpuError(
        `${kernel}: out "${out.label}" overlaps ${name} "${t.label}"; write to another buffer`,
      );
    }
  }
  return {
    batch,
    m,
    n,
    k,
    transposeA,
    transposeB,
    accumulate: args.accumulate ?? false,
    aStride: aBatched ? m * k : 0,
    bStride: bBatched ? k * n : 0,
    a,
    b,
    out,
  };
}

// ---------------------------------------------------------------------------------------------
// WGSL of the naive kernel

const NAIVE_WORKGROUP = 256;

function naiveKernel(p: MatmulProblem): string {
  const aIndex = p.transposeA ? `aBase + k * ${p.m}u + m` : `aBase + m * ${p.k}u + k`;
  const bIndex = p.transposeB ? `bBase + n * ${p.k}u + k` : `bBase + k * ${p.n}u + n`;
  return `
@compute @workgroup_size(${NAIVE_WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WGSL_LINEAR_WORKGROUP} * ${NAIVE_WORKGROUP}u + lid.x;
  if (i >= ${p.batch * p.m * p.n}u) { return; }
  let batch = i / ${p.m * p.n}u;
  let m = (i / ${p.n}u) % ${p.m}u;
  let n = i % ${p.n}u;
  let aBase = batch * ${p.aStride}u;
  let bBase = batch * ${p.bStride}u;
  var acc = 0.0;
  for (var k = 0u; k < ${p.k}u; k++) {
    acc = fma(f32(a[${aIndex}]), f32(b[${bIndex}]), acc);
  }
  out[i] = ${p.out.dtype}(${p.accumulate ? "acc + f32(out[i])" : "acc"});
}
`;
}
