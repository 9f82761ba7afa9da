/**
 * Staging textures: a tensor copied into an `rgba32float` (or, from f16,
 * `rgba16float`) texture as a flat run of 4-element texels, row after row, so
 * kernels can read it by `textureLoad`.
 *
 * On Mesa's llvmpipe a load from a storage buffer or workgroup memory is a loop
 * over the 8 lanes of a vector, each testing bounds and loading one scalar
 * (about 54 ns per 8 values on the 2-core CI machine), while a texel fetch is a
 * gather (3 to 7 ns per 8 values). The copy is a memcpy: 0.27 ms for 4 MiB
 * there, against about 200 ms for the 1024³ product that reads it. The matmul
 * and attention kernels read their operands this way on software adapters.
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
import { Tensor } from "./tensor.ts";

/** A filled staging texture: bind `view`; texel i is at (i mod `width`, i / `width`). */
export interface StagedTexels {
  /** The view to bind as `texture_2d<f32>`. */
  view: GPUTextureView;
  /** Texels per texture row, a power of two. */
  width: number;
}

interface Staging extends StagedTexels {
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
 * Records a copy of `tensor` into the staging texture of `slot` (made on first use).
 *
 * @param rec The recorder.
 * @param tensor A tensor for which {@link canStageTexels} holds.
 * @param slot Names the texture among those of the same size (e.g. "matmul a").
 * @returns The texture's view and width.
 */
export function stageTexels(rec: Recorder, tensor: Tensor, slot: string): StagedTexels {
  const [width, height] = textureSize(rec.gpu, tensor)!;
  const format = tensor.dtype === "f16" ? "rgba16float" : "rgba32float";
  let cache = stagingByGpu.get(rec.gpu);
  if (!cache) stagingByGpu.set(rec.gpu, cache = new Map());
  const key = `${slot} ${format} ${width}x${height}`;
  let staging = cache.get(key);
  if (!staging) {
    const texture = rec.gpu.createTexture(key, [width, height], format);
    staging = { texture, view: texture.createView(), width };
    cache.set(key, staging);
  }
  rec.copyToTexture(staging.texture, tensor);
  return staging;
}

/**
 * WGSL of `fn name(i: u32) -> vec4<f32>`, texel i of `texture`; the width is
 * baked in when given, else read from the texture (one pipeline for every size).
 *
 * @param name The function's name.
 * @param texture The `texture_2d<f32>` variable.
 * @param width The texture's width when fixed.
 * @returns The WGSL.
 */
export function texelFetchWgsl(name: string, texture: string, width?: number): string {
  if (width !== undefined) {
    return `fn ${name}(i: u32) -> vec4<f32> { return textureLoad(${texture}, vec2u(i % ${width}u, i / ${width}u), 0); }`;
  }
  return `fn ${name}(i: u32) -> vec4<f32> {
  let w = textureDimensions(${texture}).x;
  return textureLoad(${texture}, vec2u(i & (w - 1u), i >> countTrailingZeros(w)), 0);
}`;
}

/** Width and height of `tensor`'s texture, or null when it cannot have one. */
function textureSize(gpu: Gpu, tensor: Tensor): [number, number] | null {
  const texelBytes = 4 * Tensor.bytesPerElement(tensor.dtype);
  const texels = tensor.length / 4;
  if (!Number.isInteger(texels) || texels === 0 || tensor.byteOffset % texelBytes !== 0) return null;
  const max = gpu.limits.maxTextureDimension2D;
  // Rows of a multi-row copy must be 256-byte multiples: at least 32 texels wide.
  let width = 32;
  while (width < max && Math.ceil(texels / width) > width) width *= 2;
  const height = Math.ceil(texels / width);
  return width <= max && height <= max ? [width, height] : null;
}
