/**
 * Scratch buffers that kernels hand intermediate results through between their
 * dispatches, kept by the device so a training or decoding step creates none.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import type { Tensor } from "./tensor.ts";

const byGpu = new WeakMap<Gpu, Map<string, Tensor>>();

/**
 * The device's f32 scratch tensor of `slot` and `length`, made on first use and
 * kept for the device's life. Work recorded later may overwrite it, so a kernel
 * reads only what it wrote earlier in the same recording.
 *
 * @param gpu The device.
 * @param slot Names the use (e.g. "attention D"); each use gets buffers of its own.
 * @param length Elements.
 * @returns The tensor, shape [length].
 * @example
 * ```ts
 * const partials = scratchTensor(gpu, "cached attention partials", B * NH * chunks * (HS + 2));
 * ```
 */
export function scratchTensor(gpu: Gpu, slot: string, length: number): Tensor {
  let bySlot = byGpu.get(gpu);
  if (!bySlot) byGpu.set(gpu, bySlot = new Map());
  const key = `${slot} ${length}`;
  let t = bySlot.get(key);
  if (!t) bySlot.set(key, t = gpu.tensor([length], "f32", { label: `${slot} scratch` }));
  return t;
}
