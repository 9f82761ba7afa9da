/**
 * Incremental decoding: a key/value cache per layer, the writes that fill it,
 * and the pick of one position's row (the last prompt token's hidden state
 * after a prefill); `cached_attention.ts` attends over the caches.
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
import { texelWriterWgsl } from "./texels.ts";
import { expectDType, expectLength } from "./wgsl.ts";

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

/** Sizes of a cache kernel's problem: what {@link cacheSizes} returns. */
export interface CacheSizes {
  B: number;
  Tmax: number;
  HS: number;
  NH: number;
  NKV: number;
  /** Elements of one token's qkv row: (NH + 2·NKV)·HS. */
  row: number;
  /** Tokens per sequence in qkv. */
  Tq: number;
}

/**
 * The sizes a cache kernel's tensors imply, checked against each other.
 *
 * @param kernel The kernel's name, for errors.
 * @param qkv (B, Tq, (NH + 2·NKV)·HS).
 * @param cache (B, Tmax, NKV·HS).
 * @param heads The head counts.
 * @returns B, Tmax, HS, NH, NKV, the qkv row width and Tq.
 * @throws {GpuError} When the shapes disagree.
 */
export function cacheSizes(kernel: string, qkv: Tensor, cache: Tensor, heads: CacheHeads): CacheSizes {
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
  const s = cacheSizes("kvCacheWrite", qkv, kCache, args);
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
