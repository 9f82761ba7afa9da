/**
 * One transformer layer of a decoding step (one new token per sequence) in two
 * dispatches, for software adapters: on lavapipe every dispatch, however small,
 * costs a round trip to llvmpipe's worker threads (100–200 µs of a decoding
 * step), while the work of a layer for one token is a few hundred thousand
 * FMAs. The separate kernels took 10 dispatches a layer.
 *
 * - **query**: x̂ = RMSNorm(resid), qkv = x̂·W_qkvᵀ, RoPE on q and k at the cache
 *   position, k and v into the caches (and their kept texel copies, see
 *   `texel_cache.ts`), the rotated q into `qkv`.
 * - **rest**: attention of q over the cached keys and values (each lane an online
 *   softmax over every 8th position, the lanes combined in a fixed order), the
 *   output projection added into resid, RMSNorm, the gate/up projection with
 *   SwiGLU, and the down projection added into resid.
 *
 * The attention reads the caches written by the query dispatch, which is why a
 * layer takes two: a kernel cannot read a texture it writes.
 *
 * Each dispatch is a workgroup per sequence of {@link DECODE_LANES} invocations,
 * one vector of llvmpipe's lanes (sequences run on the driver's threads side by
 * side; one workgroup looping over them also ran past llvmpipe's loop limit,
 * see {@link decodeLayerTrips}). Weights and caches are read
 * by texel fetches (see `texels.ts`); the vector a product reads is copied from
 * workgroup memory once into a private array, and each lane computes 4 output
 * columns at a time, 4 depths a loop trip. Loops with a constant trip count are
 * bounded by `num_workgroups.x` (1) instead, which the compiler cannot see:
 * llvmpipe unrolls such loops whole, which compiled for seconds longer (a few
 * seconds remain, the first time a shape decodes) and ran slower (177 against
 * 214 tokens/s).
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import type { CacheHeads } from "./kv_cache.ts";
import type { Recorder } from "./recorder.ts";
import { ropeAngleWgsl } from "./rope.ts";
import type { Tensor } from "./tensor.ts";
import { canStageTexels, stageTexels, texelReaderWgsl, texelWriterWgsl } from "./texels.ts";
import { declare, expectDType, expectLength, expectShape, float } from "./wgsl.ts";

/**
 * Invocations per workgroup: one vector of llvmpipe's 8 lanes.
 *
 * @example
 * ```ts
 * const lanes = DECODE_LANES; // each lane takes every 8th output column and cached position
 * ```
 */
export const DECODE_LANES = 8;

/**
 * One LLaMA layer's parameters, each a tensor to bind (the model's `LayerViews`
 * are these, as views of its flat parameter buffer); Hugging Face's names in
 * parentheses.
 *
 * @example
 * ```ts
 * const weights: LayerWeights = model.views.layer(model.params, l);
 * ```
 */
export interface LayerWeights {
  /** Gain of the attention norm, input_layernorm (C). */
  attnNorm: Tensor;
  /** q, k and v projections stacked ((NH + 2·NKV)·HS, C). */
  qkv: Tensor;
  /** Output projection, o_proj (C, NH·HS). */
  attnOut: Tensor;
  /** Gain of the MLP norm, post_attention_layernorm (C). */
  mlpNorm: Tensor;
  /** Gate and up projections stacked (2·H, C). */
  gateUp: Tensor;
  /** Down projection, down_proj (C, H). */
  down: Tensor;
}

/**
 * The sizes of one decoding layer.
 *
 * @example
 * ```ts
 * const shape: DecodeLayerShape = { B: 1, C: 128, NH: 4, NKV: 4, HS: 32, H: 384, Tmax: 256 };
 * ```
 */
export interface DecodeLayerShape {
  /** Sequences. */
  B: number;
  /** Channels. */
  C: number;
  /** Query heads. */
  NH: number;
  /** Key/value heads. */
  NKV: number;
  /** Head size. */
  HS: number;
  /** MLP hidden size. */
  H: number;
  /** Cache length. */
  Tmax: number;
}

/** Workgroup memory of the rest dispatch, bytes. */
function sharedBytes(s: DecodeLayerShape): number {
  return 16 * (Math.max(s.C, s.NH * s.HS) / 4 + s.H / 4 + DECODE_LANES * (s.HS / 4)) + 4 * 3 * DECODE_LANES;
}

/**
 * Whether {@link decodeLayer} runs this shape on `gpu`: f32 throughout, widths of
 * whole texels (C, H multiples of 4, HS of 8), 5 storage textures per kernel,
 * workgroup memory for one row's vectors, and at most `gpu.loopLimit` loop trips
 * per invocation (see {@link decodeLayerTrips}).
 *
 * @param gpu The device.
 * @param s The layer's sizes.
 * @returns True when it applies.
 * @example
 * ```ts
 * const fits = decodeLayerFits(gpu, { B: 1, C: 384, NH: 6, NKV: 6, HS: 64, H: 1024, Tmax: 256 });
 * ```
 */
export function decodeLayerFits(gpu: Gpu, s: DecodeLayerShape): boolean {
  return s.C % 4 === 0 && s.H % 4 === 0 && s.HS % 8 === 0 && s.NH % s.NKV === 0 &&
    gpu.limits.maxStorageTexturesPerShaderStage >= 5 &&
    sharedBytes(s) <= gpu.limits.maxComputeWorkgroupStorageSize &&
    s.Tmax * s.NKV * s.HS / 4 <= gpu.limits.maxTextureDimension2D ** 2 &&
    s.B <= gpu.limits.maxComputeWorkgroupsPerDimension &&
    decodeLayerTrips(s) <= gpu.loopLimit + 1;
}

/**
 * Loop trips one invocation of {@link decodeLayer} makes, in the larger of its two
 * dispatches: a workgroup decodes one sequence, and its lanes loop over a layer's
 * weight columns and depths, so this grows as C·H / 64. llvmpipe silently ends
 * an invocation's loops past 65535 trips in all (`gpu.loopLimit`), which a layer
 * 2048 wide with a 5632-wide MLP (TinyLlama's) would pass.
 *
 * @param s The layer's sizes (B does not matter).
 * @returns An upper bound on the trips of one invocation, counted as `expectLoopTrips` counts them.
 * @example
 * ```ts
 * const trips = decodeLayerTrips({ B: 1, C: 384, NH: 6, NKV: 6, HS: 64, H: 1024, Tmax: 256 }); // ~4000
 * ```
 */
export function decodeLayerTrips(s: DecodeLayerShape): number {
  const perLane = (n: number) => Math.ceil(n / LANES);
  const loop = (n: number) => n + 1; // a run of a loop: its iterations and the check that ends it
  // A product: the vector copied in, then a loop over columns (4 a trip), each doing `dots` loops over the depths.
  const product = (columns4: number, K4: number, dots = 1) =>
    loop(K4) + loop(perLane(columns4)) + perLane(columns4) * dots * loop(K4 / depthUnroll(K4));
  const C4 = s.C / 4;
  const HS4 = s.HS / 4;
  const norm = 2 * loop(perLane(C4)) + loop(LANES);
  const query = norm + product((s.NH + 2 * s.NKV) * s.HS / 8, C4, 2);
  const head = loop(perLane(s.Tmax)) + 2 * loop(LANES) + loop(perLane(HS4)) + perLane(HS4) * loop(LANES);
  const rest = loop(s.NH) + s.NH * head + product(C4, s.NH * HS4) + norm + product(s.H / 4, C4, 2) +
    product(C4, s.H / 4);
  return Math.max(query, rest);
}

/**
 * Records one layer of a decoding step: resid (B, C) += the attention branch,
 * then += the MLP branch, reading and extending the caches at `position`.
 *
 * @param rec The recorder.
 * @param args `resid` (B, C) f32, updated in place; `qkv` (B, 1, (NH + 2·NKV)·HS)
 *   f32 scratch (its q part is left rotated); caches (B, Tmax, NKV·HS) f32;
 *   `position` u32 [1]; the layer's f32 `weights`; heads, `eps`, `theta`.
 * @throws {GpuError} When the shape does not fit ({@link decodeLayerFits}) or a tensor is not as described.
 * @example
 * ```ts
 * for (let l = 0; l < L; l++) {
 *   decodeLayer(rec, { resid, qkv, kCache: k[l], vCache: v[l], position, weights: views.layer(params, l),
 *     nHead: NH, nKvHead: NKV, eps: 1e-5, theta: 10000 });
 * }
 * ```
 */
export function decodeLayer(
  rec: Recorder,
  args: CacheHeads & {
    resid: Tensor;
    qkv: Tensor;
    kCache: Tensor;
    vCache: Tensor;
    position: Tensor;
    weights: LayerWeights;
    eps: number;
    theta: number;
  },
): void {
  const kernel = "decodeLayer";
  const { resid, weights: w } = args;
  const [B, C] = resid.shape.length === 2 ? resid.shape : [0, 0];
  const NH = args.nHead;
  const NKV = args.nKvHead;
  const [, Tmax, kvWidth] = args.kCache.shape.length === 3 ? args.kCache.shape : [0, 0, 0];
  const HS = kvWidth / NKV;
  const H = w.down.shape[1] ?? 0;
  const s: DecodeLayerShape = { B, C, NH, NKV, HS, H, Tmax };
  if (B < 1 || !Number.isInteger(HS) || !decodeLayerFits(rec.gpu, s)) {
    throw new GpuError(
      `${kernel}: shape ${JSON.stringify(s)} does not fit (C and H multiples of 4, HS of 8, ` +
        `5 storage textures per kernel, at most ${rec.gpu.loopLimit} loop trips per invocation); use the separate kernels`,
    );
  }
  for (const t of [resid, args.qkv, args.kCache, args.vCache, ...Object.values(w)]) {
    expectDType(kernel, t.label, t, ["f32"]);
  }
  expectShape(kernel, "qkv", args.qkv, [B, 1, (NH + 2 * NKV) * HS]);
  expectShape(kernel, "vCache", args.vCache, args.kCache.shape);
  expectShape(kernel, "weights.qkv", w.qkv, [(NH + 2 * NKV) * HS, C]);
  expectShape(kernel, "weights.attnOut", w.attnOut, [C, NH * HS]);
  expectShape(kernel, "weights.gateUp", w.gateUp, [2 * H, C]);
  expectShape(kernel, "weights.down", w.down, [C, H]);
  for (const gain of [w.attnNorm, w.mlpNorm]) expectLength(kernel, gain.label, gain, C);
  expectDType(kernel, "position", args.position, ["u32"]);
  expectLength(kernel, "position", args.position, 1);
  for (const t of [args.kCache, args.vCache, w.qkv, w.attnOut, w.gateUp, w.down]) {
    if (!canStageTexels(rec.gpu, t)) throw new GpuError(`${kernel}: "${t.label}" does not fit a texture`);
  }
  recordQuery(rec, s, args);
  recordRest(rec, s, args);
}

const LANES = DECODE_LANES;
const XYZW = ["x", "y", "z", "w"];

/** WGSL: the product's vector, `count` vec4s of `source`, into the private array `a`. */
function loadVector(source: string, count: number): string {
  return `var a: array<vec4<f32>, ${count}>;
      for (var k = 0u; k < ${count}u * one; k++) { a[k] = ${source}[k]; }`;
}

/** Depths (texels) per trip of {@link quadDots}'s loop over K4 of them. */
function depthUnroll(K4: number): number {
  return [4, 2, 1].find((u) => K4 % u === 0)!;
}

/**
 * WGSL that leaves in `name` the 4 columns from `column` of x·Wᵀ, x the vector in
 * the private array `a` (K4 vec4s) and W [N, 4·K4] read by `fetch`: a loop over
 * the depths, unrolled by up to 4 texels (a loop trip costs as much as 16 FMAs on
 * llvmpipe; unrolling every depth compiled for seconds).
 */
function quadDots(name: string, fetch: string, column: string, K4: number): string {
  const unroll = depthUnroll(K4);
  const body: string[] = [];
  for (let k = 0; k < unroll; k++) {
    body.push(`let ${name}a${k} = a[k + ${k}u];`);
    for (let c = 0; c < 4; c++) {
      body.push(`${name}${c} = fma(${name}a${k}, ${fetch}(${name}_base + k + ${c * K4 + k}u), ${name}${c});`);
    }
  }
  const sum = (c: number) => `dot(${name}${c}, vec4<f32>(1.0))`;
  return `let ${name}_base = (${column}) * ${K4}u;
        ${[0, 1, 2, 3].map((c) => `var ${name}${c} = vec4<f32>();`).join(" ")}
        for (var k = 0u; k < ${K4}u * one; k += ${unroll}u) {
          ${body.join("\n          ")}
        }
        let ${name} = vec4<f32>(${[0, 1, 2, 3].map(sum).join(", ")});`;
}

/** WGSL that writes RMSNorm(x[base..base + C4]) · gain into `into` (all lanes take part). */
function normInto(into: string, x: string, base: string, gain: string): string {
  return `{
      var ss = 0.0;
      for (var c = lane; c < C4; c += ${LANES}u) { let v = ${x}[${base} + c]; ss += dot(v, v); }
      red[lane] = ss;
      workgroupBarrier();
      var total = 0.0;
      for (var i = 0u; i < ${LANES}u; i++) { total += red[i]; }
      let r = inverseSqrt(total / f32(C) + EPS);
      for (var c = lane; c < C4; c += ${LANES}u) { ${into}[c] = ${x}[${base} + c] * r * ${gain}[c]; }
      workgroupBarrier();
    }`;
}

type LayerArgs = Parameters<typeof decodeLayer>[1];

/** The query dispatch: norm, qkv projection, RoPE, cache writes. */
function recordQuery(rec: Recorder, s: DecodeLayerShape, args: LayerArgs): void {
  const { B, C, NH, NKV, HS, Tmax } = s;
  const half = HS / 2;
  const quads = half / 4; // quads per half-head
  const { kCache, vCache } = args;
  // Kept copies of the caches are written along, made current first (a copy, the first
  // time) so that one pipeline serves every step: this dispatch writes only one row.
  const mirrorOf = (cache: Tensor) => {
    if (!rec.texelCache?.holds(cache)) return null;
    rec.texelCache.stage(rec, cache);
    return rec.texelCache.mirror(rec, cache, { partial: true });
  };
  const kMirror = mirrorOf(kCache);
  const vMirror = mirrorOf(vCache);
  const weight = stageTexels(rec, args.weights.qkv, "decode qkv weight");
  const { wgsl, bindings } = declare([
    { name: "resid", tensor: args.resid, element: "vec4<f32>" },
    { name: "gain", tensor: args.weights.attnNorm, element: "vec4<f32>" },
    { name: "position", tensor: args.position },
    { name: "qkv", tensor: args.qkv, write: true, element: "vec4<f32>" },
    { name: "kCache", tensor: kCache, write: true, element: "vec4<f32>" },
    { name: "vCache", tensor: vCache, write: true, element: "vec4<f32>" },
  ]);
  const textures = [weight.view];
  const readers = [texelReaderWgsl("fetchW", bindings.length, weight, { fixedWidth: true })];
  for (const [name, mirror] of [["storeK", kMirror], ["storeV", vMirror]] as const) {
    if (!mirror) continue;
    readers.push(texelWriterWgsl(name, bindings.length + textures.length, mirror));
    textures.push(mirror.view);
  }
  const rotate = [0, 1, 2, 3].map((e) =>
    `{ let angle = ropeAngle(pos, j * 4u + ${e}u); let c = cos(angle); let s = sin(angle);
          rx.${XYZW[e]} = x.${XYZW[e]} * c - y.${XYZW[e]} * s; ry.${XYZW[e]} = y.${XYZW[e]} * c + x.${
      XYZW[e]
    } * s; }`
  ).join("\n          ");
  const store = (cache: string, mirror: string | null) =>
    `${cache}[slot] = rx; ${cache}[slot + ${half / 4}u] = ry;${
      mirror ? ` ${mirror}(slot, rx); ${mirror}(slot + ${half / 4}u, ry);` : ""
    }`;
  const code = `${wgsl}
${readers.join("\n")}
${ropeAngleWgsl(HS, args.theta)}
const C = ${C}u;
const C4 = ${C / 4}u;
const EPS = ${float(args.eps)};
var<workgroup> normed: array<vec4<f32>, ${C / 4}>;
var<workgroup> red: array<f32, ${LANES}>;

@compute @workgroup_size(${LANES})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let lane = lid.x;
  // 1 (the grid is 1 × B), but unknown to the compiler: loops bounded by it stay
  // loops, where unrolling every constant-trip loop took llvmpipe seconds to compile.
  let one = nwg.x;
  let pos = position[0];
  let b = wid.y;
  {
    ${normInto("normed", "resid", `b * C4`, "gain")}
    {
      ${loadVector("normed", C / 4)}
      // A unit is a quad of columns and its rotation partner HS/2 further: 4 RoPE pairs.
      for (var u = lane; u < ${(NH + 2 * NKV) * quads}u; u += ${LANES}u) {
        let h = u / ${quads}u;
        let j = u % ${quads}u;
        let n0 = h * ${HS}u + j * 4u;
        ${quadDots("x", "fetchW", "n0", C / 4)}
        ${quadDots("y", "fetchW", `n0 + ${half}u`, C / 4)}
        var rx = x;
        var ry = y;
        if (h < ${NH + NKV}u) {
          ${rotate}
        }
        if (h < ${NH}u) {
          qkv[(b * ${(NH + 2 * NKV) * HS}u + n0) / 4u] = rx;
          qkv[(b * ${(NH + 2 * NKV) * HS}u + n0) / 4u + ${half / 4}u] = ry;
        } else if (pos < ${Tmax}u) {
          let kv = (h - ${NH}u) % ${NKV}u;
          let slot = ((b * ${Tmax}u + pos) * ${NKV * HS}u + kv * ${HS}u + j * 4u) / 4u;
          if (h < ${NH + NKV}u) { ${store("kCache", kMirror ? "storeK" : null)} }
          else { ${store("vCache", vMirror ? "storeV" : null)} }
        }
      }
    }
  }
}`;
  const label = `decode layer query C${C} NH${NH} NKV${NKV} HS${HS}${kMirror ? " +k texels" : ""}${
    vMirror ? " +v texels" : ""
  }`;
  rec.dispatch(rec.gpu.pipelines.get(label, code), [...bindings, ...textures], [1, B]);
  if (kMirror) rec.texelCache!.markCurrent(rec, kCache);
  if (vMirror) rec.texelCache!.markCurrent(rec, vCache);
}

/** The rest dispatch: attention over the cache, output projection, MLP, both residual adds. */
function recordRest(rec: Recorder, s: DecodeLayerShape, args: LayerArgs): void {
  const { B, C, NH, NKV, HS, H, Tmax } = s;
  const HS4 = HS / 4;
  const k = stageTexels(rec, args.kCache, "decode k cache");
  const v = stageTexels(rec, args.vCache, "decode v cache");
  const wo = stageTexels(rec, args.weights.attnOut, "decode attnOut weight");
  const wgu = stageTexels(rec, args.weights.gateUp, "decode gateUp weight");
  const wd = stageTexels(rec, args.weights.down, "decode down weight");
  const { wgsl, bindings } = declare([
    { name: "resid", tensor: args.resid, write: true, element: "vec4<f32>" },
    { name: "gain", tensor: args.weights.mlpNorm, element: "vec4<f32>" },
    { name: "position", tensor: args.position },
    { name: "qkv", tensor: args.qkv, element: "vec4<f32>" },
  ]);
  const textures = [k, v, wo, wgu, wd];
  const readers = ["fetchK", "fetchV", "fetchWo", "fetchWgu", "fetchWd"].map((name, i) =>
    texelReaderWgsl(name, bindings.length + i, textures[i], { fixedWidth: true })
  );
  const perHead = (f: (d: number) => string, joiner = "\n        ") =>
    Array.from({ length: HS4 }, (_, d) => f(d)).join(joiner);
  const code = `${wgsl}
${readers.join("\n")}
const C = ${C}u;
const C4 = ${C / 4}u;
const EPS = ${float(args.eps)};
var<workgroup> vecA: array<vec4<f32>, ${Math.max(C, NH * HS) / 4}>;
var<workgroup> vecH: array<vec4<f32>, ${H / 4}>;
var<workgroup> red: array<f32, ${LANES}>;
var<workgroup> redM: array<f32, ${LANES}>;
var<workgroup> redL: array<f32, ${LANES}>;
var<workgroup> redAcc: array<vec4<f32>, ${LANES * HS4}>;

@compute @workgroup_size(${LANES})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let lane = lid.x;
  // 1 (the grid is 1 × B), but unknown to the compiler: loops bounded by it stay
  // loops, where unrolling every constant-trip loop took llvmpipe seconds to compile.
  let one = nwg.x;
  let length = min(position[0] + 1u, ${Tmax}u);
  let b = wid.y;
  {
    for (var h = 0u; h < ${NH}u * one; h++) {
      let kvBase = b * ${Tmax * NKV * HS4}u + (h / ${NH / NKV}u) * ${HS4}u;
      let qBase = b * ${((NH + 2 * NKV) * HS) / 4}u + h * ${HS4}u;
      ${perHead((d) => `let q${d} = qkv[qBase + ${d}u] * ${float(1 / Math.sqrt(HS))};`)}
      // This lane's share of the positions, as an online softmax.
      var m = -3.0e38;
      var l = 0.0;
      ${perHead((d) => `var acc${d} = vec4<f32>();`)}
      for (var t = lane; t < length; t += ${LANES}u) {
        let at = kvBase + t * ${NKV * HS4}u;
        let p4 = ${perHead((d) => `q${d} * fetchK(at + ${d}u)`, " + ")};
        let score = p4.x + p4.y + p4.z + p4.w;
        let mNew = max(m, score);
        let correction = exp(m - mNew);
        let p = exp(score - mNew);
        l = l * correction + p;
        ${perHead((d) => `acc${d} = fma(vec4<f32>(p), fetchV(at + ${d}u), acc${d} * correction);`)}
        m = mNew;
      }
      redM[lane] = m;
      redL[lane] = l;
      ${perHead((d) => `redAcc[lane * ${HS4}u + ${d}u] = acc${d};`)}
      workgroupBarrier();
      // The lanes' shares combined in lane order.
      var mMax = -3.0e38;
      for (var i = 0u; i < ${LANES}u; i++) { mMax = max(mMax, redM[i]); }
      var total = 0.0;
      for (var i = 0u; i < ${LANES}u; i++) { total += redL[i] * exp(redM[i] - mMax); }
      for (var d = lane; d < ${HS4}u; d += ${LANES}u) {
        var o = vec4<f32>();
        for (var i = 0u; i < ${LANES}u; i++) { o += redAcc[i * ${HS4}u + d] * exp(redM[i] - mMax); }
        vecA[h * ${HS4}u + d] = o / total;
      }
      workgroupBarrier();
    }
    {
      ${loadVector("vecA", (NH * HS) / 4)}
      for (var q = lane; q < C4; q += ${LANES}u) {
        ${quadDots("o", "fetchWo", "q * 4u", (NH * HS) / 4)}
        resid[b * C4 + q] += o;
      }
    }
    storageBarrier();
    workgroupBarrier();
    ${normInto("vecA", "resid", "b * C4", "gain")}
    {
      ${loadVector("vecA", C / 4)}
      for (var q = lane; q < ${H / 4}u; q += ${LANES}u) {
        ${quadDots("g", "fetchWgu", "q * 4u", C / 4)}
        ${quadDots("u", "fetchWgu", `${H}u + q * 4u`, C / 4)}
        let e = exp(-abs(g)); // sigmoid from e^-|g|, as swigluForward
        let sg = select(e, vec4<f32>(1.0), g >= vec4<f32>(0.0)) / (1.0 + e);
        vecH[q] = g * sg * u;
      }
    }
    workgroupBarrier();
    {
      ${loadVector("vecH", H / 4)}
      for (var q = lane; q < C4; q += ${LANES}u) {
        ${quadDots("o", "fetchWd", "q * 4u", H / 4)}
        resid[b * C4 + q] += o;
      }
    }
  }
}`;
  const label = `decode layer rest C${C} NH${NH} NKV${NKV} HS${HS} H${H} T${Tmax}`;
  rec.dispatch(rec.gpu.pipelines.get(label, code), [...bindings, ...textures.map((t) => t.view)], [1, B]);
}
