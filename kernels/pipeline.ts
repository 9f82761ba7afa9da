/**
 * Compiled pipelines cached by their full WGSL text (shapes are baked into the
 * text, so the text names every constant), and bind groups cached by pipeline
 * and bound buffer ranges, so a training step replays without creating either.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { formatBytes, GpuError, GpuOutOfMemoryError, ShaderCompileError } from "./errors.ts";
import { Tensor } from "./tensor.ts";

/**
 * What one `@binding` of a kernel is bound to: a tensor's byte range, a range of
 * a raw buffer (the whole buffer from `offset` when `size` is left out), or a
 * texture view.
 *
 * @example
 * ```ts
 * const uniform = gpu.createBuffer("step", 16, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
 * const bindings: Binding[] = [x, out, { buffer: uniform }]; // @binding(0), (1), (2)
 * rec.dispatch(pipeline, bindings, grid(gpu, Math.ceil(x.length / 256)));
 * ```
 */
export type Binding = Tensor | { buffer: GPUBuffer; offset?: number; size?: number } | GPUTextureView;

type BufferRange = { buffer: GPUBuffer; offset: number; size: number };

/**
 * Compute pipelines keyed by WGSL text and entry point, so that each kernel
 * compiles once per run; every {@link Gpu} holds one as `gpu.pipelines`.
 *
 * @example
 * ```ts
 * const code = `@group(0) @binding(0) var<storage, read_write> x: array<f32>;
 * @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
 *   if (g.x < arrayLength(&x)) { x[g.x] *= 2.0; } }`;
 * const pipeline = gpu.pipelines.get("double", code); // compiled now, cached for the next call
 * rec.dispatch(pipeline, [x], Math.ceil(x.length / 64));
 * ```
 */
export class PipelineCache {
  #gpu: Gpu;
  #pipelines = new Map<string, GPUComputePipeline>();

  /**
   * Creates an empty cache.
   *
   * @param gpu The device to compile on.
   */
  constructor(gpu: Gpu) {
    this.#gpu = gpu;
  }

  /** Number of distinct pipelines compiled. */
  get size(): number {
    return this.#pipelines.size;
  }

  /**
   * Returns the pipeline for `code`, compiling it on first use. A compile error
   * is thrown at the next `gpu.check()` with line:col and the offending lines.
   *
   * @param label Names the shader in errors and profiles.
   * @param code Complete WGSL source.
   * @param entryPoint The `@compute` function. Default `"main"`.
   * @returns The pipeline.
   */
  get(label: string, code: string, entryPoint = "main"): GPUComputePipeline {
    const key = `${entryPoint}\u0000${code}`;
    let pipeline = this.#pipelines.get(key);
    if (pipeline) return pipeline;
    const device = this.#gpu.device;
    const module = device.createShaderModule({ label, code });
    this.#gpu.track(module.getCompilationInfo().then((info) => compileError(label, code, info)));
    pipeline = device.createComputePipeline({
      label,
      layout: "auto",
      compute: { module, entryPoint },
    });
    this.#gpu.stats.pipelines++;
    this.#pipelines.set(key, pipeline);
    return pipeline;
  }
}

/**
 * Bind groups keyed by pipeline and the exact buffer ranges they bind, so that
 * replaying a step creates none; every {@link Gpu} holds one as `gpu.bindGroups`,
 * which {@link Recorder.dispatch} uses. Free buffers with `gpu.release`, which
 * forgets their groups.
 *
 * @example
 * ```ts
 * const group = gpu.bindGroups.get(pipeline, [x, out]); // the same object on every later call
 * gpu.release(out); // drops the groups that bind out's buffer, then destroys it
 * ```
 */
export class BindGroupCache {
  #gpu: Gpu;
  #groups = new Map<string, GPUBindGroup>();
  #keysByBuffer = new Map<number, Set<string>>();
  #ids = new WeakMap<object, number>();
  #nextId = 1;

  /**
   * Creates an empty cache.
   *
   * @param gpu The device that owns the bind groups.
   */
  constructor(gpu: Gpu) {
    this.#gpu = gpu;
  }

  /** Number of bind groups held. */
  get size(): number {
    return this.#groups.size;
  }

  /**
   * Returns the bind group of `pipeline` (group 0) binding `bindings` to
   * `@binding(0)`, `@binding(1)`, ... in order; created on first use.
   *
   * @param pipeline The pipeline whose layout to follow.
   * @param bindings Tensors, buffer ranges or texture views, in binding order.
   * @returns The bind group.
   */
  get(pipeline: GPUComputePipeline, bindings: readonly Binding[]): GPUBindGroup {
    const resources = bindings.map(toResource);
    const ranges = resources.filter((r): r is BufferRange => !(r instanceof GPUTextureView));
    const { minStorageBufferOffsetAlignment: alignment, maxStorageBufferBindingSize: maxSize } =
      this.#gpu.limits;
    for (const range of ranges) {
      if (range.size > maxSize) {
        throw new GpuOutOfMemoryError(
          `Binding of "${range.buffer.label}" spans ${
            formatBytes(range.size)
          } but this device binds at most ` +
            `${formatBytes(maxSize)} at once; lower batch_size, block_size or n_embd`,
        );
      }
      if (range.offset % alignment !== 0) {
        throw new GpuError(
          `Binding of "${range.buffer.label}" at byte ${range.offset} is not a multiple of ${alignment}, ` +
            "the device's storage offset alignment; pad the layout of that buffer",
        );
      }
    }
    const key = `${this.#id(pipeline)}|` +
      resources.map((r) =>
        r instanceof GPUTextureView ? `t${this.#id(r)}` : `${this.#id(r.buffer)}:${r.offset}:${r.size}`
      )
        .join(",");
    let group = this.#groups.get(key);
    if (group) return group;
    group = this.#gpu.device.createBindGroup({
      label: `${pipeline.label}:bind`,
      layout: pipeline.getBindGroupLayout(0),
      entries: resources.map((resource, binding) => ({ binding, resource })),
    });
    this.#gpu.stats.bindGroups++;
    this.#groups.set(key, group);
    for (const range of ranges) {
      const id = this.#id(range.buffer);
      let keys = this.#keysByBuffer.get(id);
      if (!keys) this.#keysByBuffer.set(id, keys = new Set());
      keys.add(key);
    }
    return group;
  }

  /**
   * Drops every bind group that binds `buffer` (before destroying it).
   *
   * @param buffer The buffer going away.
   */
  forget(buffer: GPUBuffer): void {
    const id = this.#id(buffer);
    for (const key of this.#keysByBuffer.get(id) ?? []) this.#groups.delete(key);
    this.#keysByBuffer.delete(id);
  }

  #id(object: object): number {
    let id = this.#ids.get(object);
    if (id === undefined) this.#ids.set(object, id = this.#nextId++);
    return id;
  }
}

function toResource(binding: Binding): BufferRange | GPUTextureView {
  if (binding instanceof Tensor) return binding.range();
  if (binding instanceof GPUTextureView) return binding;
  const offset = binding.offset ?? 0;
  return { buffer: binding.buffer, offset, size: binding.size ?? binding.buffer.size - offset };
}

/**
 * Turns the compiler's messages into one error: the first line names the shader,
 * line:col and the complaint; the detail shows the offending WGSL with a caret.
 */
function compileError(
  label: string,
  code: string,
  info: GPUCompilationInfo,
): ShaderCompileError | null {
  const errors = info.messages.filter((m) => m.type === "error");
  if (errors.length === 0) return null;
  const first = errors[0];
  const complaint =
    first.message.trim().split("\n").find((line) =>
      line.trim() !== "" && !line.includes("┌─") && !/^\s*│?\s*$/.test(line)
    ) ?? "error";
  const summary = complaint.replace(/^Shader '.*?' parsing error:\s*/, "").trim();
  const lines = code.split("\n");
  const detail = errors.map((message) => {
    const at = message.lineNum;
    const from = Math.max(1, at - 2);
    const to = Math.min(lines.length, at + 1);
    const shown: string[] = [];
    for (let n = from; n <= to; n++) {
      shown.push(`${String(n).padStart(5)} | ${lines[n - 1]}`);
      if (n === at) shown.push(`${" ".repeat(5)} | ${" ".repeat(Math.max(0, message.linePos - 1))}^`);
    }
    return shown.join("\n");
  }).join("\n\n");
  return new ShaderCompileError(
    `Shader "${label}" failed to compile at ${first.lineNum}:${first.linePos}: ${summary}`,
    detail,
  );
}
