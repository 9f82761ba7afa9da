/**
 * Host <-> GPU copies: uploads through the queue, readbacks through a small pool
 * of reusable staging buffers (so periodic loss readbacks allocate nothing).
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import type { Tensor, TensorData } from "./tensor.ts";

/**
 * Copies `data` into `tensor`, converting to its dtype.
 *
 * @param gpu The device.
 * @param tensor The destination.
 * @param data One value per element.
 */
export function writeTensor(gpu: Gpu, tensor: Tensor, data: TensorData): void {
  if (data.length !== tensor.length) {
    throw new GpuError(
      `Cannot write ${data.length} values into "${tensor.label}" [${
        tensor.shape.join(", ")
      }] of ${tensor.length} elements`,
    );
  }
  const { size } = tensor.range();
  checkWordAligned(tensor, size);
  const bytes = new ArrayBuffer(size);
  switch (tensor.dtype) {
    case "f32":
      new Float32Array(bytes).set(data as ArrayLike<number>);
      break;
    case "f16":
      new Float16Array(bytes).set(data as ArrayLike<number>);
      break;
    case "u32":
      new Uint32Array(bytes).set(data as ArrayLike<number>);
      break;
    case "i32":
      new Int32Array(bytes).set(data as ArrayLike<number>);
      break;
  }
  gpu.queue.writeBuffer(tensor.buffer, tensor.byteOffset, bytes);
}

/**
 * Reads `tensor` back to the host once all submitted work is done, then throws
 * any error the device reported meanwhile.
 *
 * @param gpu The device.
 * @param tensor The source.
 * @returns f32/f16 as Float32Array, u32 as Uint32Array, i32 as Int32Array.
 */
export async function readBack(
  gpu: Gpu,
  tensor: Tensor,
): Promise<Float32Array | Uint32Array | Int32Array> {
  const { size } = tensor.range();
  checkWordAligned(tensor, size);
  const staging = takeStaging(gpu, size);
  try {
    const encoder = gpu.device.createCommandEncoder({ label: `read ${tensor.label}` });
    encoder.copyBufferToBuffer(tensor.buffer, tensor.byteOffset, staging, 0, size);
    gpu.queue.submit([encoder.finish()]);
    gpu.stats.submits++;
    gpu.stats.readbacks++;
    try {
      await staging.mapAsync(GPUMapMode.READ, 0, size);
    } catch (error) {
      await lossSettled(gpu);
      await gpu.check();
      throw new GpuError(`Reading "${tensor.label}" back failed: ${String(error).split("\n")[0]}`);
    }
    const bytes = staging.getMappedRange(0, size).slice(0);
    staging.unmap();
    await gpu.check();
    switch (tensor.dtype) {
      case "f32":
        return new Float32Array(bytes, 0, tensor.length);
      case "f16":
        return Float32Array.from(new Float16Array(bytes, 0, tensor.length));
      case "u32":
        return new Uint32Array(bytes, 0, tensor.length);
      case "i32":
        return new Int32Array(bytes, 0, tensor.length);
    }
  } finally {
    giveBackStaging(gpu, staging);
  }
}

/**
 * A lost device fails a pending map at once but reports why a moment later:
 * wait briefly for that report, so the caller throws the DeviceLostError that
 * explains it rather than a bare map failure.
 */
async function lossSettled(gpu: Gpu): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    gpu.device.lost,
    new Promise<void>((resolve) => timer = setTimeout(resolve, 200)),
  ]);
  clearTimeout(timer);
}

/** Copies and writes must start and end on 4-byte boundaries. */
function checkWordAligned(tensor: Tensor, size: number): void {
  if (tensor.byteOffset % 4 !== 0 || tensor.byteOffset + size > tensor.buffer.size) {
    throw new GpuError(
      `Tensor "${tensor.label}" cannot be copied: an f16 view must start on an even element and ` +
        "have an even length unless it ends its buffer",
    );
  }
}

const pools = new WeakMap<Gpu, { free: GPUBuffer[] }>();

function takeStaging(gpu: Gpu, size: number): GPUBuffer {
  let pool = pools.get(gpu);
  if (!pool) pools.set(gpu, pool = { free: [] });
  const index = pool.free.findIndex((buffer) => buffer.size >= size);
  if (index >= 0) return pool.free.splice(index, 1)[0];
  // Powers of two keep the pool small when sizes vary a little.
  const bytes = Math.max(256, 2 ** Math.ceil(Math.log2(size)));
  return gpu.createBuffer("staging", bytes, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
}

function giveBackStaging(gpu: Gpu, buffer: GPUBuffer): void {
  if (buffer.mapState !== "unmapped") return;
  pools.get(gpu)?.free.push(buffer);
}
