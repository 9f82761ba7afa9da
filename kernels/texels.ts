/**
 * Staging textures: a tensor copied into an `rgba32float` (or, from f16,
 * `rgba16float`) texture as a flat run of 4-element texels, row after row, so
 * kernels can read it by `textureLoad` from a read-only storage texture.
 *
 * On Mesa's llvmpipe a load from a storage buffer or workgroup memory is a loop
 * over the 8 lanes of a vector, each testing bounds and loading one scalar
 * (about 54 ns per 8 values on the 2-core CI machine), while a load from a
 * storage texture is an inline gather (about 4 ns per 8 values; a sampled
 * texture's `textureLoad` calls a generic fetch routine, about 7). The copy is
 * a memcpy: 0.27 ms for 4 MiB there, against about 100 ms for the 1024³ product
 * that reads it. The matmul and attention kernels read their operands this way
 * on software adapters.
 *
 * Textures are kept per device, per `slot` (a name the caller picks) and size,
 * and reused: copies and dispatches run in recording order, so a texture is
 * refilled only after the kernel before has read it. Texture widths are powers
 * of two, so a texel index splits into (x, y) by a mask and a shift.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import type { Recorder } from "./recorder.ts";
import { grid } from "./recorder.ts";
import { Tensor } from "./tensor.ts";
import { declare } from "./wgsl.ts";

/**
 * A filled staging texture: texel i is at (i mod `width`, i / `width`).
 *
 * @example
 * ```ts
 * const staged = stageTexels(rec, x, "my kernel x");
 * const wgsl = texelReaderWgsl("fetchX", 1, staged, { fixedWidth: true }); // fn fetchX(i: u32) -> vec4<f32>
 * rec.dispatch(pipeline, [out, staged.view], [groups]);
 * ```
 */
export interface StagedTexels {
  /** The view to bind (see {@link texelReaderWgsl}). */
  view: GPUTextureView;
  /** Texels per texture row, a power of two. */
  width: number;
  /** The texture's format: `rgba16float` for f16 tensors, else `rgba32float`. */
  format: "rgba32float" | "rgba16float";
}

/** A staging texture with the view and layout kernels read it by. */
export interface Staging extends StagedTexels {
  /** The texture itself (for copies into it, and to free it). */
  texture: GPUTexture;
}

const stagingByGpu = new WeakMap<Gpu, Map<string, Staging>>();

/**
 * Whether `tensor` can be staged on `gpu`: whole texels (a length that is a multiple
 * of 4), a texel-aligned offset, and few enough texels for one texture.
 *
 * @param gpu The device.
 * @param tensor The tensor.
 * @returns True when {@link stageTexels} accepts it.
 */
export function canStageTexels(gpu: Gpu, tensor: Tensor): boolean {
  return textureSize(gpu, tensor) !== null;
}

/**
 * Records a copy of `tensor` into the staging texture of `slot` (made on first use),
 * or, for a tensor the recorder's `TexelCache` holds, returns its kept copy.
 *
 * @param rec The recorder.
 * @param tensor A tensor for which {@link canStageTexels} holds.
 * @param slot Names the texture among those of the same size (e.g. "matmul a").
 * @returns The texture's view and width.
 */
export function stageTexels(rec: Recorder, tensor: Tensor, slot: string): StagedTexels {
  if (rec.texelCache?.holds(tensor)) return rec.texelCache.stage(rec, tensor);
  const staging = slotTexture(rec.gpu, slot, textureSize(rec.gpu, tensor)!, formatOf(tensor));
  rec.copyToTexture(staging.texture, tensor);
  return staging;
}

/**
 * Whether a matrix padded with zeros to [paddedRows, ⌈cols/4⌉·4] fits one
 * staging texture on `gpu`.
 *
 * @param gpu The device.
 * @param paddedRows Rows of the padded matrix.
 * @param cols Columns of the matrix.
 * @returns True when {@link stagePaddedTexels} accepts a tensor of that shape.
 */
export function canStagePaddedTexels(gpu: Gpu, paddedRows: number, cols: number): boolean {
  return paddedRows > 0 && cols > 0 && textureSizeFor(gpu, paddedRows * Math.ceil(cols / 4)) !== null;
}

/**
 * Records a kernel that writes `tensor`, read as a [rows, cols] matrix, into the
 * staging texture of `slot` as [paddedRows, ⌈cols/4⌉] texels: each row starts on
 * a texel, and the columns past `cols` and the rows past `rows` are zero. For
 * texel kernels whose operands' rows are not whole texels (a vocabulary of 65);
 * a plain copy cannot move rows that are not whole texels.
 *
 * @param rec The recorder.
 * @param tensor The tensor (rows·cols elements, f32 or f16).
 * @param shape `rows`, `cols` and `paddedRows` (≥ rows).
 * @param slot Names the texture among those of the same size (e.g. "matmul a").
 * @returns The texture's view, width and format.
 */
export function stagePaddedTexels(
  rec: Recorder,
  tensor: Tensor,
  shape: { rows: number; cols: number; paddedRows: number },
  slot: string,
): StagedTexels {
  const { rows, cols, paddedRows } = shape;
  const rowTexels = Math.ceil(cols / 4);
  const texels = paddedRows * rowTexels;
  const format = formatOf(tensor);
  const staging = slotTexture(rec.gpu, `${slot} padded`, textureSizeFor(rec.gpu, texels)!, format);
  const { width } = staging;
  const { wgsl, bindings } = declare([{ name: "src", tensor }]);
  const code = `${wgsl}
@group(0) @binding(1) var dst: texture_storage_2d<${format}, write>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let t = gid.x + gid.y * nwg.x * 64u;
  if (t >= ${texels}u) { return; }
  let r = t / ${rowTexels}u;
  let c = (t % ${rowTexels}u) * 4u;
  var v = vec4<f32>();
  if (r < ${rows}u) {
    for (var i = 0u; i < 4u; i++) {
      if (c + i < ${cols}u) { v[i] = f32(src[r * ${cols}u + c + i]); }
    }
  }
  textureStore(dst, vec2u(t % ${width}u, t / ${width}u), v);
}`;
  const pipeline = rec.gpu.pipelines.get(`pad texels ${rows}x${cols} -> ${paddedRows}x${rowTexels}`, code);
  rec.dispatch(pipeline, [...bindings, staging.view], grid(rec.gpu, Math.ceil(texels / 64)));
  return staging;
}

/**
 * The staging format of `tensor`'s dtype.
 *
 * @param tensor An f32 or f16 tensor.
 * @returns `rgba16float` for f16, else `rgba32float`.
 */
export function formatOf(tensor: Tensor): StagedTexels["format"] {
  return tensor.dtype === "f16" ? "rgba16float" : "rgba32float";
}

/**
 * A new staging texture of `size` texels, outside the per-slot cache (the caller frees it).
 *
 * @param gpu The device.
 * @param label Names the texture.
 * @param size Width (a power of two) and height, from {@link textureSize}.
 * @param format The texel format.
 * @returns The texture with its view, width and format.
 */
export function makeStaging(
  gpu: Gpu,
  label: string,
  size: [number, number],
  format: StagedTexels["format"],
): Staging {
  const texture = gpu.createTexture(label, size, format);
  return { texture, view: texture.createView(), width: size[0], format };
}

/**
 * A texture of at least `texels` rgba32float texels that the device keeps for `slot`,
 * made on first use: one kernel writes it (see {@link texelWriterWgsl}) and a later
 * one in the same recording reads it (see {@link texelReaderWgsl}).
 *
 * @param gpu The device.
 * @param slot Names the texture among those of the same size.
 * @param texels How many texels it must hold.
 * @returns The texture, or null when that many texels do not fit one.
 */
export function scratchTexels(gpu: Gpu, slot: string, texels: number): StagedTexels | null {
  const size = textureSizeFor(gpu, texels);
  return size ? slotTexture(gpu, slot, size, "rgba32float") : null;
}

/** The device's texture of `slot`, format and size, made on first use. */
function slotTexture(
  gpu: Gpu,
  slot: string,
  size: [number, number],
  format: StagedTexels["format"],
): Staging {
  let cache = stagingByGpu.get(gpu);
  if (!cache) stagingByGpu.set(gpu, cache = new Map());
  const key = `${slot} ${format} ${size[0]}x${size[1]}`;
  let staging = cache.get(key);
  if (!staging) {
    staging = makeStaging(gpu, key, size, format);
    cache.set(key, staging);
  }
  return staging;
}

/**
 * WGSL that declares `staged` at `@binding(binding)` of group 0 as `tex_{name}`,
 * and `fn name(i: u32) -> vec4<f32>`, texel i. The width is baked in with
 * `fixedWidth`, else read from the texture (one pipeline for every size).
 *
 * The texture is bound as a read-only storage texture: llvmpipe compiles its
 * loads inline, while a sampled texture's `textureLoad` calls a generic fetch
 * routine that looks up the mip level per lane; in a matmul the storage form
 * ran 1.2–1.35× faster.
 *
 * @param name The function's name.
 * @param binding The binding index.
 * @param staged The staging texture it will be bound to (its format is part of the type).
 * @param options `fixedWidth`: bake `staged.width` into the code.
 * @returns The WGSL.
 */
export function texelReaderWgsl(
  name: string,
  binding: number,
  staged: StagedTexels,
  options: { fixedWidth?: boolean } = {},
): string {
  const texture = `tex_${name}`;
  const declaration =
    `@group(0) @binding(${binding}) var ${texture}: texture_storage_2d<${staged.format}, read>;`;
  if (options.fixedWidth) {
    const { width } = staged;
    return `${declaration}
fn ${name}(i: u32) -> vec4<f32> { return textureLoad(${texture}, vec2u(i % ${width}u, i / ${width}u)); }`;
  }
  return `${declaration}
fn ${name}(i: u32) -> vec4<f32> {
  let w = textureDimensions(${texture}).x;
  return textureLoad(${texture}, vec2u(i & (w - 1u), i >> countTrailingZeros(w)));
}`;
}

/**
 * Elements from which a memory-bound kernel on a software adapter reads its inputs
 * from staged copies rather than storage: below it (a decoding step's few rows) the
 * copy moves more than the loads cost, and decoding copies nothing.
 */
export const TEXEL_READ_MIN = 1 << 14;

/**
 * Largest chunk of a long flat tensor (parameters, gradients, optimizer state) a
 * kernel stages at once: 4 MiB of f32 per staged tensor, so staging stays small
 * next to what it copies.
 */
export const TEXEL_CHUNK = 1 << 20;

/**
 * Stages each of `reads` for a kernel that reads them by texel fetch (slots named
 * `{kernel} {name}`), or returns null, staging nothing, when any cannot be staged.
 *
 * @param rec The recorder.
 * @param kernel Names the slots.
 * @param reads The tensors, by the names the kernel reads them as.
 * @returns The staged copies, by name, or null.
 */
export function stageReads(
  rec: Recorder,
  kernel: string,
  reads: readonly (readonly [string, Tensor])[],
): (readonly [string, StagedTexels])[] | null {
  if (!reads.every(([, t]) => canStageTexels(rec.gpu, t))) return null;
  return reads.map(([name, t]) => [name, stageTexels(rec, t, `${kernel} ${name}`)] as const);
}

/**
 * WGSL readers `fetch_{name}(i)` for the copies {@link stageReads} made, bound from
 * `first` on, and the views to bind there.
 *
 * @param staged The staged copies, by name.
 * @param first The first binding index.
 * @returns The WGSL and the views, in binding order.
 */
export function texelReads(
  staged: readonly (readonly [string, StagedTexels])[],
  first: number,
): { wgsl: string; views: GPUTextureView[] } {
  return {
    wgsl: staged.map(([name, texels], k) => texelReaderWgsl(`fetch_${name}`, first + k, texels)).join("\n"),
    views: staged.map(([, texels]) => texels.view),
  };
}

/**
 * WGSL that declares `staged` at `@binding(binding)` of group 0 as a write-only
 * storage texture `tex_{name}`, and `fn name(i: u32, v: vec4<f32>)`, which writes
 * texel i: how a kernel writes a kept copy (see `TexelCache.mirror`) along with
 * the tensor it produces.
 *
 * @param name The function's name.
 * @param binding The binding index.
 * @param staged The texture it will be bound to (its width and format are baked in).
 * @returns WGSL for the module scope.
 * @example
 * ```ts
 * const mirror = rec.texelCache?.mirror(rec, out) ?? null;
 * const wgsl = mirror ? texelWriterWgsl("storeOut", 2, mirror) : ""; // storeOut(i, value) beside out[i] = value
 * ```
 */
export function texelWriterWgsl(name: string, binding: number, staged: StagedTexels): string {
  const texture = `tex_${name}`;
  return `@group(0) @binding(${binding}) var ${texture}: texture_storage_2d<${staged.format}, write>;
fn ${name}(i: u32, v: vec4<f32>) { textureStore(${texture}, vec2u(i % ${staged.width}u, i / ${staged.width}u), v); }`;
}

/**
 * Width and height of `tensor`'s staging texture, or null when it cannot have one.
 *
 * @param gpu The device.
 * @param tensor The tensor.
 * @returns The size, or null.
 */
export function textureSize(gpu: Gpu, tensor: Tensor): [number, number] | null {
  const texelBytes = 4 * Tensor.bytesPerElement(tensor.dtype);
  const texels = tensor.length / 4;
  if (!Number.isInteger(texels) || texels === 0 || tensor.byteOffset % texelBytes !== 0) return null;
  return textureSizeFor(gpu, texels);
}

/** Width and height of a texture of `texels` texels, or null when too many. */
function textureSizeFor(gpu: Gpu, texels: number): [number, number] | null {
  const max = gpu.limits.maxTextureDimension2D;
  // Rows of a multi-row copy must be 256-byte multiples: at least 32 texels wide.
  let width = 32;
  while (width < max && Math.ceil(texels / width) > width) width *= 2;
  const height = Math.ceil(texels / width);
  return width <= max && height <= max ? [width, height] : null;
}
