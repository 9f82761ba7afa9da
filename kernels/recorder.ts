/**
 * Records GPU work into one command encoder. Dispatches share a single compute
 * pass (WebGPU orders storage writes between dispatches in a pass, and a pass per
 * dispatch costs about twice as much on the CPU); copies and clears close it.
 * With a {@link GpuTimer}, each dispatch gets its own timed pass instead.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import type { Binding } from "./pipeline.ts";
import { Tensor } from "./tensor.ts";
import type { GpuTimer } from "./timer.ts";
import type { TexelCache } from "./texel_cache.ts";

/**
 * Options of {@link Recorder}: a timer to profile each dispatch and copy, and a
 * label for the command buffer in errors and debuggers.
 *
 * @example
 * ```ts
 * const options: RecorderOptions = { timer: new GpuTimer(gpu), label: "step 1" };
 * const rec = new Recorder(gpu, options); // every dispatch now in its own timed pass
 * ```
 */
export interface RecorderOptions {
  /** Times every dispatch, copy and clear with timestamp queries (a copy's label starts with "copy "). */
  timer?: GpuTimer;
  /** Names the command buffer. */
  label?: string;
  /**
   * Staging copies for texel kernels kept across recordings, of constant and of
   * mirrored tensors, for this recording to read and keep current. (Every
   * recording marks stale, in all of the device's caches, the kept copies of what
   * it writes.)
   */
  texelCache?: TexelCache;
}

/**
 * A dispatch grid of workgroups: x alone, or [x, y, z] with y and z defaulting to 1.
 *
 * @example
 * ```ts
 * const workgroups: Workgroups = [Math.ceil(T / 64), NH, B]; // one workgroup per 64 rows, head, sequence
 * rec.dispatch(pipeline, [q, out], workgroups);
 * ```
 */
export type Workgroups = number | readonly [number, number?, number?];

/**
 * Records the dispatches and copies of a step into one command buffer; every
 * op takes one as its first argument. Submit once with {@link Recorder.submit}.
 *
 * @example
 * ```ts
 * const rec = new Recorder(gpu, { label: "forward" });
 * rmsnormForward(rec, { out: xn, rstd, x, weight, eps: 1e-5 }); // xn [B, T, C]
 * matmul(rec, { out: qkv, a: xn, b: wqkv, transposeB: true }); // qkv [B, T, 3C]
 * rec.submit(); // one command buffer, one compute pass
 * await gpu.sync();
 * ```
 */
export class Recorder {
  /** The device. */
  readonly gpu: Gpu;
  /** The encoder being recorded into. */
  readonly encoder: GPUCommandEncoder;
  /** Dispatches recorded so far. */
  dispatches = 0;
  /** The staging copies this recording may reuse (see `texels.ts`). */
  readonly texelCache: TexelCache | undefined;
  #pass: GPUComputePassEncoder | null = null;
  #timer: GpuTimer | undefined;

  /**
   * Opens a command encoder.
   *
   * @param gpu The device.
   * @param options A timer and a label.
   */
  constructor(gpu: Gpu, options: RecorderOptions = {}) {
    this.gpu = gpu;
    this.encoder = gpu.device.createCommandEncoder({ label: options.label ?? "step" });
    this.#timer = options.timer;
    this.texelCache = options.texelCache;
  }

  /**
   * Records one dispatch of `pipeline` with `bindings` bound to group 0 in
   * declaration order; the bind group is cached.
   *
   * @param pipeline From `gpu.pipelines.get`.
   * @param bindings Tensors or buffer ranges, in `@binding` order.
   * @param workgroups Grid size; each dimension at most the device limit (use {@link grid}).
   */
  dispatch(pipeline: GPUComputePipeline, bindings: readonly Binding[], workgroups: Workgroups): void {
    const [x, y = 1, z = 1] = typeof workgroups === "number" ? [workgroups] : workgroups;
    const limit = this.gpu.limits.maxComputeWorkgroupsPerDimension;
    if (x > limit || y > limit || z > limit) {
      throw new GpuError(
        `Dispatch of "${pipeline.label}" asks for ${x}x${y}x${z} workgroups; at most ${limit} per dimension (use grid())`,
      );
    }
    if (x === 0 || y === 0 || z === 0) return;
    const group = this.gpu.bindGroups.get(pipeline, bindings);
    for (const binding of bindings) this.#touch(binding);
    const pass = this.#timer ? this.#timedPass(pipeline.label) : this.#sharedPass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
    if (this.#timer) pass.end();
    this.dispatches++;
    this.gpu.stats.dispatches++;
  }

  /**
   * Copies all of `source` into `target` (same byte length).
   *
   * @param target Destination tensor.
   * @param source Source tensor.
   */
  copy(target: Tensor, source: Tensor): void {
    if (target.byteLength !== source.byteLength) {
      throw new GpuError(`Cannot copy "${source.label}" into "${target.label}": sizes differ`);
    }
    this.#touch(target);
    this.gpu.stats.copies++;
    const size = source.range().size;
    this.#timedCopy(`copy ${source.label}`, () => {
      this.encoder.copyBufferToBuffer(
        source.buffer,
        source.byteOffset,
        target.buffer,
        target.byteOffset,
        size,
      );
    });
  }

  /**
   * Copies all of `source` into `texture` as a flat run of 4-element texels,
   * row after row of `texture`'s width: texel i holds elements 4i..4i+3.
   *
   * @param texture An `rgba32float` (f32 source) or `rgba16float` (f16 source) texture
   *   with room for `source.length / 4` texels.
   * @param source The tensor; its length a multiple of 4 and its byte offset of a texel.
   */
  copyToTexture(texture: GPUTexture, source: Tensor): void {
    const texelBytes = 4 * Tensor.bytesPerElement(source.dtype);
    const texels = source.length / 4;
    if (
      !Number.isInteger(texels) || source.byteOffset % texelBytes !== 0 ||
      texels > texture.width * texture.height
    ) {
      throw new GpuError(
        `Cannot copy "${source.label}" into texture "${texture.label}": it needs a length that is a multiple ` +
          "of 4, a texel-aligned offset and a texture large enough",
      );
    }
    this.gpu.stats.copies++;
    const rowBytes = texture.width * texelBytes;
    const rows = Math.floor(texels / texture.width);
    const rest = texels % texture.width;
    const from = (offset: number) => ({
      buffer: source.buffer,
      offset: source.byteOffset + offset,
      bytesPerRow: rowBytes,
    });
    this.#timedCopy(`copy ${source.label}`, () => {
      if (rows > 0) this.encoder.copyBufferToTexture(from(0), { texture }, [texture.width, rows]);
      if (rest > 0) {
        this.encoder.copyBufferToTexture(from(rows * rowBytes), { texture, origin: [0, rows] }, [rest, 1]);
      }
    });
  }

  /**
   * Fills `tensor` with zero bytes.
   *
   * @param tensor The tensor to clear; its byte range must be 4-byte aligned.
   */
  clear(tensor: Tensor): void {
    this.#touch(tensor);
    this.gpu.stats.copies++;
    const { offset, size } = tensor.range();
    this.#timedCopy(`clear ${tensor.label}`, () => this.encoder.clearBuffer(tensor.buffer, offset, size));
  }

  /**
   * Ends recording without submitting, e.g. to submit several recorders together.
   *
   * @returns The command buffer, for `gpu.queue.submit`.
   */
  finish(): GPUCommandBuffer {
    this.#endPass();
    this.#timer?.resolve(this.encoder);
    for (const cache of this.gpu.texelCaches) cache.commit(this);
    return this.encoder.finish();
  }

  /** Ends recording and submits the work to the queue. */
  submit(): void {
    this.gpu.queue.submit([this.finish()]);
    this.gpu.stats.submits++;
  }

  /** Marks stale every kept copy of what `binding` may write, in all of the device's texel caches. */
  #touch(binding: Binding): void {
    for (const cache of this.gpu.texelCaches) cache.touch(this, binding);
  }

  #sharedPass(): GPUComputePassEncoder {
    return this.#pass ??= this.encoder.beginComputePass();
  }

  /**
   * Records a copy or clear outside any compute pass; with a timer, between two
   * empty passes that write its start and end timestamps, so profiles count
   * copies (texel staging, on software adapters) as GPU work too.
   */
  #timedCopy(label: string, record: () => void): void {
    this.#endPass();
    if (!this.#timer) return record();
    const { querySet, beginningOfPassWriteIndex, endOfPassWriteIndex } = this.#timer.next(label);
    this.encoder.beginComputePass({ label, timestampWrites: { querySet, beginningOfPassWriteIndex } }).end();
    record();
    this.encoder.beginComputePass({ label, timestampWrites: { querySet, endOfPassWriteIndex } }).end();
  }

  #timedPass(label: string): GPUComputePassEncoder {
    this.#endPass();
    return this.encoder.beginComputePass({ label, timestampWrites: this.#timer!.next(label) });
  }

  #endPass(): void {
    this.#pass?.end();
    this.#pass = null;
  }
}

/**
 * Splits `count` workgroups into a 2-D grid when it exceeds the per-dimension
 * limit. A kernel dispatched this way recovers its linear workgroup index with
 * {@link WGSL_LINEAR_WORKGROUP} and guards against the overhang.
 *
 * @param gpu The device (for its limit).
 * @param count Workgroups wanted.
 * @returns `[x, y]` with x·y ≥ count.
 * @example
 * ```ts
 * // One thread per element of n = 2^28 in workgroups of 256: 2^20 workgroups.
 * const workgroups = grid(gpu, Math.ceil(n / 256)); // [61681, 17] when the limit is 65535
 * rec.dispatch(pipeline, [x, out], workgroups);
 * ```
 */
export function grid(gpu: Gpu, count: number): [number, number] {
  const limit = gpu.limits.maxComputeWorkgroupsPerDimension;
  if (count <= limit) return [count, 1];
  const y = Math.ceil(count / limit);
  return [Math.ceil(count / y), y];
}

/**
 * WGSL expression for the linear workgroup index of a {@link grid} dispatch;
 * needs `@builtin(workgroup_id) wid: vec3u` and `@builtin(num_workgroups) nwg: vec3u`.
 */
export const WGSL_LINEAR_WORKGROUP = "(wid.x + wid.y * nwg.x)";
