/**
 * Incremental decoding: a key/value cache per layer, the writes that fill it,
 * attention of one new query per sequence over the cached keys, and the pick of
 * one position's row (the last prompt token's hidden state after a prefill).
 *
 * Layouts: qkv (B, Tq, (NH + 2·NKV)·HS) as the fused projection writes it;
 * caches (B, Tmax, NKV·HS), one for keys and one for values; `position` a u32
 * tensor of one element read on the GPU, so a decoding loop advances it with
 * `gpu.write` and every step replays the same pipelines. All kernels overwrite
 * their outputs.
 *
 * @module
 */

import { recordElementwise } from "./elementwise.ts";
import { GpuError } from "./errors.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { canStageTexels, stageTexels, texelReaderWgsl, texelWriterWgsl } from "./texels.ts";
import { declare, expectDType, expectF16Support, expectLength, float } from "./wgsl.ts";

/**
 * The head counts the cache kernels take besides their tensors: they fix where
 * the keys and values sit in a qkv row and which kv head a query head reads.
 *
 * @example
 * ```ts
 * const heads: CacheHeads = { nHead: NH, nKvHead: NKV };
 * kvCacheWrite(rec, { ...heads, kCache, vCache, qkv, position });
 * cachedAttention(rec, { ...heads, out, qkv, kCache, vCache, position });
 * ```
 */
export interface CacheHeads {
  /** Query heads NH. */
  nHead: number;
  /** Key/value heads NKV (divides NH). */
  nKvHead: number;
}

const WORKGROUP = 64;
/** Longest cache {@link cachedAttention} handles: its scores row lives in 16 KiB of workgroup memory. */
export const MAX_CACHE_LENGTH = 4096;

function sizes(kernel: string, qkv: Tensor, cache: Tensor, heads: CacheHeads) {
  const { nHead: NH, nKvHead: NKV } = heads;
  if (!Number.isInteger(NH) || !Number.isInteger(NKV) || NKV < 1 || NH % NKV !== 0) {
    throw new GpuError(`${kernel}: nHead ${NH} must be a multiple of nKvHead ${NKV}`);
  }
  if (cache.shape.length !== 3) {
    throw new GpuError(`${kernel}: cache "${cache.label}" must be (B, Tmax, NKV·HS), got [${cache.shape}]`);
  }
  const [B, Tmax, kvWidth] = cache.shape;
  if (kvWidth % NKV !== 0) {
    throw new GpuError(`${kernel}: cache width ${kvWidth} is not a multiple of NKV ${NKV}`);
  }
  const HS = kvWidth / NKV;
  const row = (NH + 2 * NKV) * HS;
  if (qkv.length % (B * row) !== 0) {
    throw new GpuError(
      `${kernel}: qkv "${qkv.label}" of ${qkv.length} elements is not (B=${B}, Tq, ${row}) for these heads`,
    );
  }
  return { B, Tmax, HS, NH, NKV, row, Tq: qkv.length / (B * row) };
}

/**
 * Copies the keys and values of `qkv`'s Tq tokens into the caches at positions
 * position .. position + Tq − 1 (the caller keeps that below Tmax).
 *
 * @param rec The recorder.
 * @param args Caches `kCache`, `vCache` (B, Tmax, NKV·HS); `qkv` (B, Tq, …);
 *   `position` (u32 [1], or a number baked in); heads.
 * @example
 * ```ts
 * kvCacheWrite(rec, { kCache, vCache, qkv, position: 0, nHead: 4, nKvHead: 4 }); // after a prefill
 * ```
 */
export function kvCacheWrite(
  rec: Recorder,
  args: CacheHeads & { kCache: Tensor; vCache: Tensor; qkv: Tensor; position: Tensor | number },
): void {
  const { kCache, vCache, qkv, position } = args;
  const s = sizes("kvCacheWrite", qkv, kCache, args);
  expectLength("kvCacheWrite", "vCache", vCache, kCache.length);
  const width = s.NKV * s.HS;
  const positioned = typeof position !== "number";
  if (positioned) {
    expectDType("kvCacheWrite", "position", position, ["u32"]);
    expectLength("kvCacheWrite", "position", position, 1);
  } else if (!(Number.isInteger(position) && position >= 0 && position + s.Tq <= s.Tmax)) {
    throw new GpuError(
      `kvCacheWrite: position ${position} + ${s.Tq} tokens does not fit a cache of ${s.Tmax}`,
    );
  }
  // Kept texel copies of the caches (for the texel attention) are written too while
  // they are current; a thread then moves 4 values of a row, one texel.
  const kMirror = width % 4 === 0 ? rec.texelCache?.mirror(rec, kCache, { partial: true }) ?? null : null;
  const vMirror = width % 4 === 0 ? rec.texelCache?.mirror(rec, vCache, { partial: true }) ?? null : null;
  const per = kMirror || vMirror ? 4 : 1;
  const decls = [
    ...(positioned ? [{ name: "position", tensor: position }] : []),
    { name: "qkv", tensor: qkv },
    { name: "kCache", tensor: kCache, write: true },
    { name: "vCache", tensor: vCache, write: true },
  ];
  const mirrors = [["storeK", kMirror], ["storeV", vMirror]] as const;
  const stores = (cache: Tensor, name: string, store: string, mirrored: boolean, offset: string) => {
    const values = Array.from({ length: per }, (_, e) => `${name}${e}`);
    const lines = values.flatMap((value, e) => [
      `let ${value} = ${cache.dtype}(qkv[source + ${offset}${e}u]);`,
      `${name}[slot + ${e}u] = ${value};`,
    ]);
    if (mirrored) lines.push(`${store}(slot / 4u, vec4<f32>(${values.map((v) => `f32(${v})`).join(", ")}));`);
    return lines.join("\n  ");
  };
  let binding = decls.length;
  recordElementwise(rec, {
    label: `kv cache write ${qkv.dtype}->${kCache.dtype}${per === 4 ? " by texels" : ""}${
      kMirror ? " +k texels" : ""
    }${vMirror ? " +v texels" : ""}`,
    decls,
    n: (s.B * s.Tq * width) / per,
    body: `let c = (i * ${per}u) % ${width}u;
  let t = ((i * ${per}u) / ${width}u) % ${s.Tq}u;
  let b = (i * ${per}u) / ${width * s.Tq}u;
  let source = (b * ${s.Tq}u + t) * ${s.row}u + ${s.NH * s.HS}u + c;
  let pos = ${positioned ? "position[0]" : `${position}u`} + t;
  if (pos >= ${s.Tmax}u) { return; }
  let slot = (b * ${s.Tmax}u + pos) * ${width}u + c;
  ${stores(kCache, "kCache", "storeK", kMirror !== null, "")}
  ${stores(vCache, "vCache", "storeV", vMirror !== null, `${width}u + `)}`,
    helpers: mirrors.map(([name, m]) => (m ? `\n${texelWriterWgsl(name, binding++, m)}` : "")).join(""),
    textures: mirrors.flatMap(([, m]) => (m ? [m.view] : [])),
  });
  if (kMirror) rec.texelCache!.markCurrent(rec, kCache);
  if (vMirror) rec.texelCache!.markCurrent(rec, vCache);
}

/**
 * Attention of each sequence's one new query (the token at `position`) over the
 * cached keys 0..position: out = softmax(q·Kᵀ·scale)·V per head, grouped-query
 * heads reading kv head ⌊h/(NH/NKV)⌋. One workgroup per (head, sequence): scores
 * into workgroup memory, a fixed-order max and sum, then the weighted values.
 *
 * @param rec The recorder.
 * @param args `out` (B, NH·HS); `qkv` (B, 1, …) holding the new token's q (after
 *   RoPE); caches filled through `position`; `position` u32 [1]; heads; `scale`
 *   (default 1/√HS).
 * @example
 * ```ts
 * // One decoding step at slot t: qkv [B, 1, (NH + 2·NKV)·HS], caches [B, Tmax, NKV·HS].
 * gpu.write(position, [t]); // position: gpu.tensor([1], "u32")
 * ropeForward(rec, { qkv, nHead: NH, nKvHead: NKV, theta: 10000, positionOffset: position });
 * kvCacheWrite(rec, { kCache, vCache, qkv, position, nHead: NH, nKvHead: NKV });
 * cachedAttention(rec, { out, qkv, kCache, vCache, position, nHead: NH, nKvHead: NKV }); // out [B, NH·HS]
 * ```
 */
export function cachedAttention(
  rec: Recorder,
  args: CacheHeads & {
    out: Tensor;
    qkv: Tensor;
    kCache: Tensor;
    vCache: Tensor;
    position: Tensor;
    scale?: number;
    /** Read the caches by texel fetches from staged copies (default: on software adapters; see `texels.ts`). */
    texels?: boolean;
  },
): void {
  const { out, qkv, kCache, vCache, position } = args;
  const kernel = "cachedAttention";
  const s = sizes(kernel, qkv, kCache, args);
  if (s.Tq !== 1) throw new GpuError(`${kernel}: qkv must hold one token per sequence, got ${s.Tq}`);
  if (s.Tmax > MAX_CACHE_LENGTH) {
    throw new GpuError(`${kernel}: a cache of ${s.Tmax} positions exceeds the ${MAX_CACHE_LENGTH} supported`);
  }
  expectLength(kernel, "vCache", vCache, kCache.length);
  expectLength(kernel, "out", out, s.B * s.NH * s.HS);
  expectDType(kernel, "position", position, ["u32"]);
  expectLength(kernel, "position", position, 1);
  expectF16Support(kernel, rec.gpu.features.f16, [out, qkv, kCache, vCache]);
  const scale = args.scale ?? 1 / Math.sqrt(s.HS);
  const group = s.NH / s.NKV;
  const stageable = s.HS % 4 === 0 && canStageTexels(rec.gpu, kCache) && canStageTexels(rec.gpu, vCache);
  if (args.texels && !stageable) {
    throw new GpuError(
      `cachedAttention: texel reads need a head size that is a multiple of 4 (got ${s.HS}) and texel-aligned ` +
        "caches; leave texels unset",
    );
  }
  if (args.texels ?? (rec.gpu.info.fallback && stageable)) {
    cachedAttentionTexels(rec, { out, qkv, kCache, vCache, position, scale, sizes: s });
    return;
  }
  const { wgsl, bindings } = declare([
    { name: "position", tensor: position },
    { name: "qkv", tensor: qkv },
    { name: "kCache", tensor: kCache },
    { name: "vCache", tensor: vCache },
    { name: "out", tensor: out, write: true },
  ]);
  const code = `${wgsl}
const HS = ${s.HS}u;
const TMAX = ${s.Tmax}u;
const KV_WIDTH = ${s.NKV * s.HS}u;
var<workgroup> q: array<f32, ${s.HS}>;
var<workgroup> scores: array<f32, ${s.Tmax}>;
${cachedAttentionEntry()}
  let kvHead = h / ${group}u;
  let length = min(position[0] + 1u, TMAX);
  for (var d = lid; d < HS; d += ${WORKGROUP}u) {
    q[d] = f32(qkv[b * ${s.row}u + h * HS + d]) * ${float(scale)};
  }
  workgroupBarrier();
  ${
    softmaxOverCache(`let k = (b * TMAX + t) * KV_WIDTH + kvHead * HS;
    var score = 0.0;
    for (var d = 0u; d < HS; d++) { score += q[d] * f32(kCache[k + d]); }`)
  }
  for (var d = lid; d < HS; d += ${WORKGROUP}u) {
    var acc = 0.0;
    for (var t = 0u; t < length; t++) {
      acc += scores[t] * f32(vCache[(b * TMAX + t) * KV_WIDTH + kvHead * HS + d]);
    }
    out[(b * ${s.NH}u + h) * HS + d] = ${out.dtype}(acc / rowSum);
  }
}`;
  rec.dispatch(rec.gpu.pipelines.get(`cached attention HS${s.HS}`, code), bindings, [s.NH, s.B]);
}

/**
 * WGSL shared by both cached-attention kernels, from the workgroup reduction to
 * the entry point's first lines (lid; h, the query head; b, the sequence).
 */
function cachedAttentionEntry(): string {
  return `var<workgroup> partial: array<f32, ${WORKGROUP}>;

// Fixed-order tree over the workgroup: every thread gets the same total.
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
}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid3: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let lid = lid3.x;
  let h = wid.x;
  let b = wid.y;`;
}

/**
 * WGSL that fills `scores[t]` for t < length with softmax weights, unnormalised,
 * and leaves their sum in `rowSum`; `scoreOf` computes `score` for key t.
 */
function softmaxOverCache(scoreOf: string): string {
  return `var localMax = -3.0e38;
  for (var t = lid; t < length; t += ${WORKGROUP}u) {
    ${scoreOf}
    scores[t] = score;
    localMax = max(localMax, score);
  }
  let rowMax = reduce(localMax, lid, true);
  var localSum = 0.0;
  for (var t = lid; t < length; t += ${WORKGROUP}u) {
    let p = exp(scores[t] - rowMax);
    scores[t] = p;
    localSum += p;
  }
  let rowSum = reduce(localSum, lid, false);`;
}

/**
 * {@link cachedAttention} for software adapters: the query lives in registers and
 * the cached keys and values come by texel fetches from staged copies, a vec4 at a
 * time, where the storage kernel pays a per-lane loop for every value it reads.
 */
function cachedAttentionTexels(
  rec: Recorder,
  args: {
    out: Tensor;
    qkv: Tensor;
    kCache: Tensor;
    vCache: Tensor;
    position: Tensor;
    scale: number;
    sizes: ReturnType<typeof sizes>;
  },
): void {
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
${cachedAttentionEntry()}
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
    softmaxOverCache(`let k0 = (b * TMAX + t) * ROW4 + kvHead * ${H4}u;
    let dot4 = ${vecs((d) => `q${d} * fetchK(k0 + ${d}u)`, " + ")};
    let score = dot4.x + dot4.y + dot4.z + dot4.w;`)
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

/**
 * out[b, :] = x[b, position, :]: one position's row of each sequence (the last
 * prompt token after a prefill padded to the block).
 *
 * @param rec The recorder.
 * @param args `out` (B, C); `x` (B, T, C); `position` u32 [1].
 * @example
 * ```ts
 * // After a prefill of a 5-token prompt padded to T: the hidden state that predicts token 6.
 * const last = gpu.tensor([1], "u32", { data: [4] });
 * selectPosition(rec, { out: hidden, x: lnf, position: last }); // lnf [B, T, C] -> hidden [B, C]
 * ```
 */
export function selectPosition(rec: Recorder, args: { out: Tensor; x: Tensor; position: Tensor }): void {
  const { out, x, position } = args;
  if (x.shape.length !== 3) throw new GpuError(`selectPosition: x must be (B, T, C), got [${x.shape}]`);
  const [B, T, C] = x.shape;
  expectLength("selectPosition", "out", out, B * C);
  expectDType("selectPosition", "position", position, ["u32"]);
  recordElementwise(rec, {
    label: `select position ${x.dtype}->${out.dtype}`,
    decls: [{ name: "position", tensor: position }, { name: "x", tensor: x }, {
      name: "out",
      tensor: out,
      write: true,
    }],
    n: B * C,
    body: `let t = min(position[0], ${T - 1}u);
  out[i] = ${out.dtype}(x[((i / ${C}u) * ${T}u + t) * ${C}u + i % ${C}u]);`,
  });
}
