/**
 * Attention of each sequence's one new query over its key/value cache (a
 * decoding step; `kv_cache.ts` fills the caches).
 *
 * The storage kernel is split the way flash-decoding splits it: a workgroup per
 * (chunk of cached positions, head, sequence) writes its chunk's softmax
 * statistics (max m, sum l) and unnormalised output, and a second dispatch
 * combines the chunks, each weighted by exp(m − M) for the largest m. One new
 * token gives a GPU only B·NH workgroups of work, too few to fill it; chunks
 * spread a long cache over many more, and no cache is too long for workgroup
 * memory. A cache that fits one chunk takes one dispatch, which normalises its
 * output itself.
 *
 * On software adapters a texel kernel reads the caches from staged copies (see
 * `texels.ts`), one workgroup per (head, sequence), its scores in workgroup
 * memory; caches too long for that take the storage kernels.
 *
 * @module
 */

import { GpuError } from "./errors.ts";
import { type CacheHeads, type CacheSizes, cacheSizes } from "./kv_cache.ts";
import type { Recorder } from "./recorder.ts";
import { scratchTensor } from "./scratch.ts";
import { expectLoopTrips } from "./selftest.ts";
import type { Tensor } from "./tensor.ts";
import { canStageTexels, stageTexels, texelReaderWgsl, texelWriterWgsl } from "./texels.ts";
import { declare, expectDType, expectF16Support, expectLength, float } from "./wgsl.ts";

const WORKGROUP = 64;
/**
 * Cached positions per workgroup of the storage kernel: four scores a thread.
 * A block of 256 then takes one dispatch, and a cache of 4096 sixteen chunks a head.
 */
const DEFAULT_CHUNK = 256;

/**
 * The arguments of {@link cachedAttention}.
 *
 * @example
 * ```ts
 * // Chunks of 512 positions: a 4096-position cache takes 8 workgroups a head, then one to combine them.
 * const args: CachedAttentionArgs = { out, qkv, kCache, vCache, position, nHead: 32, nKvHead: 8, chunk: 512 };
 * cachedAttention(rec, args);
 * ```
 */
export interface CachedAttentionArgs extends CacheHeads {
  /** (B, NH·HS), overwritten. */
  out: Tensor;
  /** (B, 1, (NH + 2·NKV)·HS): the new token's q (after RoPE). */
  qkv: Tensor;
  /** Keys (B, Tmax, NKV·HS), filled through `position`. */
  kCache: Tensor;
  /** Values, as `kCache`. */
  vCache: Tensor;
  /** u32 [1]: the new token's slot; it attends to slots 0..position. */
  position: Tensor;
  /** Default 1/√HS. */
  scale?: number;
  /** Read the caches by texel fetches from staged copies (default: on software adapters; see `texels.ts`). */
  texels?: boolean;
  /**
   * Cached positions per workgroup of the storage kernel (default 256); a cache
   * longer than one chunk adds a dispatch that combines them.
   */
  chunk?: number;
}

/**
 * Attention of each sequence's one new query (the token at `position`) over the
 * cached keys 0..position: out = softmax(q·Kᵀ·scale)·V per head, grouped-query
 * heads reading kv head ⌊h/(NH/NKV)⌋. Every reduction runs in a fixed order, so
 * results are bit-identical run to run.
 *
 * @param rec The recorder.
 * @param args The tensors, heads and options ({@link CachedAttentionArgs}).
 * @throws {GpuError} When the tensors do not fit together, or `texels` is asked for where it cannot apply.
 * @example
 * ```ts
 * // One decoding step at slot t: qkv [B, 1, (NH + 2·NKV)·HS], caches [B, Tmax, NKV·HS].
 * gpu.write(position, [t]); // position: gpu.tensor([1], "u32")
 * ropeForward(rec, { qkv, nHead: NH, nKvHead: NKV, theta: 10000, positionOffset: position });
 * kvCacheWrite(rec, { kCache, vCache, qkv, position, nHead: NH, nKvHead: NKV });
 * cachedAttention(rec, { out, qkv, kCache, vCache, position, nHead: NH, nKvHead: NKV }); // out [B, NH·HS]
 * ```
 */
export function cachedAttention(rec: Recorder, args: CachedAttentionArgs): void {
  const { out, qkv, kCache, vCache, position } = args;
  const kernel = "cachedAttention";
  const s = cacheSizes(kernel, qkv, kCache, args);
  if (s.Tq !== 1) throw new GpuError(`${kernel}: qkv must hold one token per sequence, got ${s.Tq}`);
  expectLength(kernel, "vCache", vCache, kCache.length);
  expectLength(kernel, "out", out, s.B * s.NH * s.HS);
  expectDType(kernel, "position", position, ["u32"]);
  expectLength(kernel, "position", position, 1);
  expectF16Support(kernel, rec.gpu.features.f16, [out, qkv, kCache, vCache]);
  const chunk = args.chunk ?? DEFAULT_CHUNK;
  if (!Number.isInteger(chunk) || chunk < 1) {
    throw new GpuError(`${kernel}: chunk must be a positive whole number of positions, got ${chunk}`);
  }
  const scale = args.scale ?? 1 / Math.sqrt(s.HS);
  const unstageable = texelsUnfit(rec, s, kCache, vCache);
  if (args.texels && unstageable) {
    throw new GpuError(`${kernel}: texel reads need ${unstageable}; leave texels unset`);
  }
  if (args.texels ?? (rec.gpu.info.fallback && !unstageable)) {
    cachedAttentionTexels(rec, { out, qkv, kCache, vCache, position, scale, sizes: s });
  } else {
    cachedAttentionChunks(rec, { out, qkv, kCache, vCache, position, scale, chunk, sizes: s });
  }
}

/** Why the texel kernel cannot run this problem, or null when it can. */
function texelsUnfit(rec: Recorder, s: CacheSizes, kCache: Tensor, vCache: Tensor): string | null {
  if (s.HS % 4 !== 0) return `a head size that is a multiple of 4 (got ${s.HS})`;
  if (!canStageTexels(rec.gpu, kCache) || !canStageTexels(rec.gpu, vCache)) {
    return "caches that fit a texture";
  }
  const bytes = (s.Tmax + WORKGROUP) * 4; // scores and the reduction's partials
  const limit = rec.gpu.limits.maxComputeWorkgroupStorageSize;
  return bytes > limit
    ? `${bytes} bytes of workgroup memory for a cache of ${s.Tmax} positions (the adapter has ${limit})`
    : null;
}

/** What the two kernels take once the arguments are checked. */
interface Resolved {
  out: Tensor;
  qkv: Tensor;
  kCache: Tensor;
  vCache: Tensor;
  position: Tensor;
  scale: number;
  sizes: CacheSizes;
}

/**
 * The storage kernels: one dispatch per chunk of the cache, then (for more than
 * one chunk) the combining dispatch. Partial outputs (B, NH, chunks, HS) and
 * statistics (B, NH, chunks, 2) live in a scratch buffer of the device.
 */
function cachedAttentionChunks(rec: Recorder, args: Resolved & { chunk: number }): void {
  const { out, qkv, kCache, vCache, position, scale, sizes: s } = args;
  const chunk = Math.min(args.chunk, s.Tmax);
  const chunks = Math.ceil(s.Tmax / chunk);
  const limit = rec.gpu.limits.maxComputeWorkgroupsPerDimension;
  if (chunks > limit) {
    throw new GpuError(
      `cachedAttention: ${chunks} chunks of ${chunk} positions exceed the ${limit} workgroups a dispatch allows; ` +
        "use a larger chunk",
    );
  }
  const shared = (chunk + s.HS + WORKGROUP) * 4; // scores, q and the reduction's partials
  if (shared > rec.gpu.limits.maxComputeWorkgroupStorageSize) {
    throw new GpuError(
      `cachedAttention: a chunk of ${chunk} positions needs ${shared} bytes of workgroup memory, past the ` +
        `adapter's ${rec.gpu.limits.maxComputeWorkgroupStorageSize}; use a smaller chunk`,
    );
  }
  const split = chunks > 1;
  const perThread = (n: number) => Math.ceil(n / WORKGROUP);
  const loop = (n: number) => n + 1; // a run of a loop: its iterations and the check that ends it
  const reductions = 2 * loop(Math.log2(WORKGROUP));
  const chunkTrips = loop(perThread(s.HS)) + perThread(chunk) * loop(s.HS) + 1 + reductions +
    loop(perThread(chunk)) + perThread(s.HS) * loop(chunk) + 1;
  expectLoopTrips(rec.gpu, "cachedAttention", chunkTrips, "use a smaller chunk");
  if (split) {
    const combineTrips = 2 * loop(chunks) + perThread(s.HS) * loop(chunks) + 1;
    expectLoopTrips(rec.gpu, "cachedAttention", combineTrips, "use a larger chunk");
  }
  const partials = split
    ? scratchTensor(rec.gpu, "cached attention partials", s.B * s.NH * chunks * (s.HS + 2))
    : null;
  const { wgsl, bindings } = declare([
    { name: "position", tensor: position },
    { name: "qkv", tensor: qkv },
    { name: "kCache", tensor: kCache },
    { name: "vCache", tensor: vCache },
    partials
      ? { name: "partials", tensor: partials, write: true }
      : { name: "out", tensor: out, write: true },
  ]);
  const stats = `${s.B * s.NH * chunks * s.HS}u`; // where the (m, l) pairs start in partials
  const finish = partials
    ? `partials[slot * HS + d] = acc;
  }
  if (lid == 0u && start < length) {
    partials[${stats} + slot * 2u] = rowMax;
    partials[${stats} + slot * 2u + 1u] = rowSum;
  }`
    : `out[(b * ${s.NH}u + h) * HS + d] = ${out.dtype}(acc / rowSum);
  }`;
  const code = `${wgsl}
const HS = ${s.HS}u;
const TMAX = ${s.Tmax}u;
const CHUNK = ${chunk}u;
const KV_WIDTH = ${s.NKV * s.HS}u;
var<workgroup> q: array<f32, ${s.HS}>;
var<workgroup> scores: array<f32, ${chunk}>;
${reductionWgsl()}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid3: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let lid = lid3.x;
  let h = wid.y;
  let b = wid.z;
  let slot = (b * ${s.NH}u + h) * ${chunks}u + wid.x;
  let kvHead = h / ${s.NH / s.NKV}u;
  let length = min(position[0] + 1u, TMAX);
  // Chunks past the new token find no positions; the combine skips them.
  let start = wid.x * CHUNK;
  let end = min(start + CHUNK, length);
  for (var d = lid; d < HS; d += ${WORKGROUP}u) {
    q[d] = f32(qkv[b * ${s.row}u + h * HS + d]) * ${float(scale)};
  }
  workgroupBarrier();
  ${
    softmaxWgsl(
      "start",
      "end",
      `let k = (b * TMAX + t) * KV_WIDTH + kvHead * HS;
    var score = 0.0;
    for (var d = 0u; d < HS; d++) { score += q[d] * f32(kCache[k + d]); }`,
    )
  }
  for (var d = lid; d < HS; d += ${WORKGROUP}u) {
    var acc = 0.0;
    for (var t = start; t < end; t++) {
      acc += scores[t - start] * f32(vCache[(b * TMAX + t) * KV_WIDTH + kvHead * HS + d]);
    }
    ${finish}
}`;
  const label = `cached attention HS${s.HS} chunk ${chunk}${split ? ` of ${chunks}` : ""}`;
  rec.dispatch(rec.gpu.pipelines.get(label, code), bindings, [chunks, s.NH, s.B]);
  if (partials) combineChunks(rec, { out, position, partials, chunk, chunks, sizes: s });
}

/**
 * out = Σ_c exp(m_c − M)·acc_c / Σ_c exp(m_c − M)·l_c over the chunks that hold
 * positions, M the largest m_c: a workgroup per (head, sequence), a thread per
 * output value, the chunks in order.
 */
function combineChunks(
  rec: Recorder,
  args: { out: Tensor; position: Tensor; partials: Tensor; chunk: number; chunks: number; sizes: CacheSizes },
): void {
  const { out, position, partials, chunk, chunks, sizes: s } = args;
  const { wgsl, bindings } = declare([
    { name: "position", tensor: position },
    { name: "partials", tensor: partials },
    { name: "out", tensor: out, write: true },
  ]);
  const code = `${wgsl}
const HS = ${s.HS}u;
const STATS = ${s.B * s.NH * chunks * s.HS}u;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid3: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let lid = lid3.x;
  let first = (wid.y * ${s.NH}u + wid.x) * ${chunks}u;
  let used = (min(position[0] + 1u, ${s.Tmax}u) + ${chunk - 1}u) / ${chunk}u;
  var top = -3.0e38;
  for (var c = 0u; c < used; c++) { top = max(top, partials[STATS + (first + c) * 2u]); }
  var total = 0.0;
  for (var c = 0u; c < used; c++) {
    total += exp(partials[STATS + (first + c) * 2u] - top) * partials[STATS + (first + c) * 2u + 1u];
  }
  for (var d = lid; d < HS; d += ${WORKGROUP}u) {
    var acc = 0.0;
    for (var c = 0u; c < used; c++) {
      acc += exp(partials[STATS + (first + c) * 2u] - top) * partials[(first + c) * HS + d];
    }
    out[(wid.y * ${s.NH}u + wid.x) * HS + d] = ${out.dtype}(acc / total);
  }
}`;
  const label = `cached attention combine HS${s.HS} ${chunks}x${chunk}`;
  rec.dispatch(rec.gpu.pipelines.get(label, code), bindings, [s.NH, s.B]);
}

/**
 * {@link cachedAttention} for software adapters: the query lives in registers and
 * the cached keys and values come by texel fetches from staged copies, a vec4 at a
 * time, where the storage kernel pays a per-lane loop for every value it reads.
 */
function cachedAttentionTexels(rec: Recorder, args: Resolved): void {
  const { out, qkv, position, scale, sizes: s } = args;
  const H4 = s.HS / 4;
  const k = stageTexels(rec, args.kCache, "cache k");
  const v = stageTexels(rec, args.vCache, "cache v");
  // A kept texel copy of out (the next matmul's input) is written as well.
  const mirror = rec.texelCache?.mirror(rec, out) ?? null;
  const { wgsl, bindings } = declare([
    { name: "position", tensor: position },
    { name: "qkv", tensor: qkv },
    { name: "out", tensor: out, write: true },
  ]);
  const vecs = (piece: (d: number) => string, joiner = "\n  ") =>
    Array.from({ length: H4 }, (_, d) => piece(d)).join(joiner);
  const code = `${wgsl}
${texelReaderWgsl("fetchK", 3, k, { fixedWidth: true })}
${texelReaderWgsl("fetchV", 4, v, { fixedWidth: true })}
${mirror ? texelWriterWgsl("storeOut", 5, mirror) : ""}
const TMAX = ${s.Tmax}u;
const ROW4 = ${(s.NKV * s.HS) / 4}u; // texels per cached position
var<workgroup> scores: array<f32, ${s.Tmax}>;
${reductionWgsl()}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid3: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let lid = lid3.x;
  let h = wid.x;
  let b = wid.y;
  let kvHead = h / ${s.NH / s.NKV}u;
  let length = min(position[0] + 1u, TMAX);
  let qBase = b * ${s.row}u + h * ${s.HS}u;
  ${
    vecs((d) =>
      `let q${d} = vec4<f32>(${[0, 1, 2, 3].map((c) => `f32(qkv[qBase + ${4 * d + c}u])`).join(", ")}) * ${
        float(scale)
      };`
    )
  }
  ${
    softmaxWgsl(
      "0u",
      "length",
      `let k0 = (b * TMAX + t) * ROW4 + kvHead * ${H4}u;
    let dot4 = ${vecs((d) => `q${d} * fetchK(k0 + ${d}u)`, " + ")};
    let score = dot4.x + dot4.y + dot4.z + dot4.w;`,
    )
  }
  // A thread per 4 output values, each texel of V read once.
  if (lid < ${H4}u) {
    var acc = vec4<f32>(0.0);
    for (var t = 0u; t < length; t++) {
      acc += scores[t] * fetchV((b * TMAX + t) * ROW4 + kvHead * ${H4}u + lid);
    }
    let o = (b * ${s.NH}u + h) * ${s.HS}u + lid * 4u;
    let r = vec4<${out.dtype}>(acc / rowSum);
    ${[0, 1, 2, 3].map((c) => `out[o + ${c}u] = r.${"xyzw"[c]};`).join("\n    ")}${
    mirror ? "\n    storeOut(o / 4u, vec4<f32>(r));" : ""
  }
  }
}`;
  const label = `cached attention texels HS${s.HS}${mirror ? " +texels" : ""}`;
  const textures = mirror ? [k.view, v.view, mirror.view] : [k.view, v.view];
  rec.dispatch(rec.gpu.pipelines.get(label, code), [...bindings, ...textures], [s.NH, s.B]);
  if (mirror) rec.texelCache!.markCurrent(rec, out);
}

/** WGSL of `reduce`: a fixed-order tree over the workgroup, so every thread gets the same total. */
function reductionWgsl(): string {
  return `var<workgroup> partial: array<f32, ${WORKGROUP}>;

fn reduce(v: f32, lid: u32, isMax: bool) -> f32 {
  partial[lid] = v;
  workgroupBarrier();
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride >>= 1u) {
    if (lid < stride) {
      if (isMax) { partial[lid] = max(partial[lid], partial[lid + stride]); }
      else { partial[lid] = partial[lid] + partial[lid + stride]; }
    }
    workgroupBarrier();
  }
  let total = partial[0];
  workgroupBarrier();
  return total;
}`;
}

/**
 * WGSL that fills `scores[t − start]` for start ≤ t < end with softmax weights,
 * unnormalised, and leaves their max in `rowMax` and sum in `rowSum` (−3e38 and
 * 0 for no positions); `scoreOf` computes `score` for key t.
 */
function softmaxWgsl(start: string, end: string, scoreOf: string): string {
  return `var localMax = -3.0e38;
  for (var t = ${start} + lid; t < ${end}; t += ${WORKGROUP}u) {
    ${scoreOf}
    scores[t - ${start}] = score;
    localMax = max(localMax, score);
  }
  let rowMax = reduce(localMax, lid, true);
  var localSum = 0.0;
  for (var t = ${start} + lid; t < ${end}; t += ${WORKGROUP}u) {
    let p = exp(scores[t - ${start}] - rowMax);
    scores[t - ${start}] = p;
    localSum += p;
  }
  let rowSum = reduce(localSum, lid, false);`;
}
