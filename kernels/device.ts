/**
 * A headless WebGPU device with the adapter's real limits, the optional features
 * this project uses (`shader-f16`, `timestamp-query`, `subgroups`), labelled
 * allocations, cached pipelines and bind groups, and errors turned into
 * {@link GpuError}s that say what to do.
 *
 * Errors the WebGPU API reports asynchronously (validation, out-of-memory, shader
 * compilation, device loss) are collected as they happen and thrown at the next
 * synchronisation point: {@link Gpu.check}, {@link Gpu.read} or {@link Gpu.sync}.
 *
 * @module
 */

import {
  DeviceLostError,
  formatBytes,
  GpuError,
  GpuOutOfMemoryError,
  MissingFeatureError,
  NoAdapterError,
} from "./errors.ts";
import { BindGroupCache, PipelineCache } from "./pipeline.ts";
import { type DType, Tensor, type TensorData } from "./tensor.ts";
import { Recorder, type RecorderOptions } from "./recorder.ts";
import type { TexelCache } from "./texel_cache.ts";
import { readBack, writeTensor } from "./transfer.ts";
import { checkF16, measureLoopLimit } from "./selftest.ts";

/**
 * How to treat an optional WebGPU feature: use it if present (`"auto"`), demand
 * it (`"require"`: {@link requestGpu} throws without it), or leave it off.
 *
 * @example
 * ```ts
 * const gpu = await requestGpu({ f16: "require", timestamps: "off" });
 * ```
 */
export type FeatureWish = "auto" | "require" | "off";

/**
 * Options of {@link requestGpu}: which optional features to use and which adapter to prefer.
 *
 * @example
 * ```ts
 * const options: GpuOptions = { f16: "off", timestamps: "auto", powerPreference: "low-power" };
 * const gpu = await requestGpu(options);
 * ```
 */
export interface GpuOptions {
  /** `shader-f16`: f16 storage and arithmetic in WGSL. Default `"auto"`. */
  f16?: FeatureWish;
  /** `timestamp-query`: per-kernel GPU timing. Default `"auto"`. */
  timestamps?: FeatureWish;
  /** Adapter preference. Default `"high-performance"`. */
  powerPreference?: GPUPowerPreference;
}

/**
 * The features that are on for a {@link Gpu} (`gpu.features`), e.g. to choose
 * the training precision.
 *
 * @example
 * ```ts
 * if (!gpu.features.f16) console.warn(`f16 is off: ${gpu.f16Problem || "the adapter lacks shader-f16"}`);
 * const config = trainConfig({ dtype: gpu.features.f16 ? "f16" : "f32" });
 * ```
 */
export interface GpuFeatures {
  /** `shader-f16` is enabled and passed the start-up check against the CPU. */
  f16: boolean;
  /** `timestamp-query` is enabled: {@link GpuTimer} measures kernels. */
  timestamps: boolean;
  /** `subgroups` is enabled. */
  subgroups: boolean;
}

/**
 * What the adapter says of itself, plus what we infer (`gpu.info`), for logs and
 * for warning when training would run on the CPU.
 *
 * @example
 * ```ts
 * const { name, backend, fallback } = gpu.info;
 * if (fallback) console.warn(`${name} (${backend}) is a software adapter: expect slow training`);
 * ```
 */
export interface AdapterSummary {
  /** Human-readable name, e.g. `NVIDIA H200` or `llvmpipe (LLVM 15.0.6, 256 bits)`. */
  name: string;
  /** Vendor as reported (a name, or a PCI id). */
  vendor: string;
  /** Architecture as reported (may be empty). */
  architecture: string;
  /** The native API underneath, inferred (WebGPU does not report it). */
  backend: string;
  /** True for a software (CPU) implementation such as Mesa's llvmpipe. */
  fallback: boolean;
  /** Every feature the adapter offers. */
  features: string[];
}

/**
 * The limits this project cares about, as granted to the device (`gpu.limits`):
 * they bound the largest tensor and the kernels' workgroup shapes.
 *
 * @example
 * ```ts
 * const floats = gpu.limits.maxStorageBufferBindingSize / 4;
 * console.log(`one tensor can hold up to ${floats} f32 values`);
 * ```
 */
export interface GpuLimits {
  /** Largest storage buffer binding, bytes. */
  maxStorageBufferBindingSize: number;
  /** Largest buffer, bytes. */
  maxBufferSize: number;
  /** Workgroup (shared) memory, bytes. */
  maxComputeWorkgroupStorageSize: number;
  /** Threads per workgroup. */
  maxComputeInvocationsPerWorkgroup: number;
  /** Workgroup size in x. */
  maxComputeWorkgroupSizeX: number;
  /** Workgroup size in y. */
  maxComputeWorkgroupSizeY: number;
  /** Workgroups per grid dimension. */
  maxComputeWorkgroupsPerDimension: number;
  /** Storage buffers one shader may bind. */
  maxStorageBuffersPerShaderStage: number;
  /** Storage textures one kernel may bind (texel reads on software adapters). */
  maxStorageTexturesPerShaderStage: number;
  /** Alignment of a storage binding's offset, bytes. */
  minStorageBufferOffsetAlignment: number;
  /** Width and height of a 2D texture, texels. */
  maxTextureDimension2D: number;
}

/**
 * Counters of GPU objects created (`gpu.stats`), to show a training step creates
 * none and to see how much memory a model holds.
 *
 * @example
 * ```ts
 * const before = { ...gpu.stats };
 * await trainer.step();
 * console.log(gpu.stats.buffers - before.buffers); // 0: a step reuses its buffers
 * console.log(gpu.stats.dispatches - before.dispatches); // the kernels one step records
 * ```
 */
export interface GpuStats {
  /** Buffers allocated. */
  buffers: number;
  /** Textures allocated (matmul staging on software adapters). */
  textures: number;
  /** Compute pipelines compiled. */
  pipelines: number;
  /** Bind groups created. */
  bindGroups: number;
  /** Command buffers submitted. */
  submits: number;
  /** Tensors read back to the host: each waits for the GPU, a round trip. */
  readbacks: number;
  /** Dispatches recorded. */
  dispatches: number;
  /** Copies and clears recorded: each also ends the compute pass. */
  copies: number;
  /**
   * Bytes in buffers and textures allocated and not yet freed through {@link Gpu.release}:
   * what a model, trainer or run holds.
   */
  bytes: number;
}

const LIMIT_NAMES: (keyof GpuLimits)[] = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
  "maxStorageTexturesPerShaderStage",
  "minStorageBufferOffsetAlignment",
  "maxTextureDimension2D",
];

/**
 * A WebGPU device with caches and error reporting: it allocates tensors, copies
 * data in and out, records GPU work, and throws what went wrong at the next
 * synchronisation point. Get one with {@link requestGpu}.
 *
 * @example
 * ```ts
 * const gpu = await requestGpu();
 * const x = gpu.tensor([4], "f32", { label: "x", data: [1, 2, 3, 4] });
 * console.log(gpu.info.name, gpu.features.f16, await gpu.read(x));
 * gpu.release(x);
 * ```
 */
export class Gpu {
  /** The underlying WebGPU device. */
  readonly device: GPUDevice;
  /** The adapter the device came from. */
  readonly adapter: GPUAdapter;
  /** Adapter name, vendor, backend and features. */
  readonly info: AdapterSummary;
  /** The features in use. */
  readonly features: GpuFeatures;
  /** Why f16 is off although the adapter offers it (empty when it is on or absent). */
  f16Problem = "";
  /** The limits granted to the device. */
  readonly limits: GpuLimits;
  /**
   * Loop iterations one invocation may run before the driver silently stops its
   * loops (65535 on Mesa's llvmpipe; Infinity elsewhere). Measured on software
   * adapters by `requestGpu`.
   */
  loopLimit: number = Infinity;
  /**
   * The device's live texel caches: every recording marks stale the kept copies
   * of what it writes in each of them, whether or not it was given one (see
   * `TexelCache`).
   */
  readonly texelCaches: Set<TexelCache> = new Set();
  /** Objects created so far. */
  readonly stats: GpuStats = {
    buffers: 0,
    textures: 0,
    pipelines: 0,
    bindGroups: 0,
    submits: 0,
    readbacks: 0,
    dispatches: 0,
    copies: 0,
    bytes: 0,
  };
  /** Compiled pipelines, keyed by WGSL text. */
  readonly pipelines: PipelineCache;
  /** Bind groups, keyed by pipeline and bound ranges. */
  readonly bindGroups: BindGroupCache;

  #pending: Promise<GpuError | null>[] = [];
  #errors: GpuError[] = [];
  #lost: DeviceLostError | null = null;
  #destroyed = false;
  #lostListeners: ((error: DeviceLostError) => void)[] = [];

  /**
   * Wraps an existing device; most callers want {@link requestGpu} instead.
   *
   * @param adapter The adapter the device came from.
   * @param device The device.
   * @param info The adapter summary.
   */
  constructor(adapter: GPUAdapter, device: GPUDevice, info: AdapterSummary) {
    this.adapter = adapter;
    this.device = device;
    this.info = info;
    this.features = {
      f16: device.features.has("shader-f16"),
      timestamps: device.features.has("timestamp-query"),
      subgroups: device.features.has("subgroups"),
    };
    this.limits = Object.fromEntries(
      LIMIT_NAMES.map((name) => [name, device.limits[name]]),
    ) as unknown as GpuLimits;
    this.pipelines = new PipelineCache(this);
    this.bindGroups = new BindGroupCache(this);
    device.addEventListener("uncapturederror", (event) => {
      const error = (event as GPUUncapturedErrorEvent).error;
      this.#errors.push(toGpuError(error));
    });
    device.lost.then((info) => {
      if (this.#destroyed) return;
      this.#lost = new DeviceLostError(info.reason ?? "unknown", info.message);
      for (const listener of this.#lostListeners) listener(this.#lost);
    });
  }

  /** The device's queue. */
  get queue(): GPUQueue {
    return this.device.queue;
  }

  /** True once the device is lost (not by {@link Gpu.destroy}). */
  get isLost(): boolean {
    return this.#lost !== null;
  }

  /**
   * Calls `listener` if the device is lost, so a trainer can save what it can.
   *
   * @param listener Receives the error that explains the loss.
   */
  onLost(listener: (error: DeviceLostError) => void): void {
    this.#lostListeners.push(listener);
    if (this.#lost) listener(this.#lost);
  }

  /**
   * Adds an asynchronous check (an error scope, a compilation report) whose error
   * is thrown at the next {@link Gpu.check}.
   *
   * @param check Resolves to an error, or null when all went well.
   */
  track(check: Promise<GpuError | null>): void {
    this.#pending.push(check);
  }

  /**
   * Throws the first error the device reported since the last check: a lost
   * device, a shader that failed to compile, an allocation that failed, or a
   * validation error.
   *
   * @returns Resolves when no error is pending.
   */
  async check(): Promise<void> {
    const pending = this.#pending;
    this.#pending = [];
    const results = await Promise.all(pending);
    if (this.#lost) throw this.#lost;
    const errors = [...results.filter((e): e is GpuError => e !== null), ...this.#errors];
    this.#errors = [];
    if (errors.length > 0) throw errors[0];
  }

  /**
   * Waits for all submitted work, then {@link Gpu.check}s for errors.
   *
   * @returns Resolves once the submitted work is done and no error is pending.
   */
  async sync(): Promise<void> {
    if (!this.#lost) await this.queue.onSubmittedWorkDone();
    await this.check();
  }

  /**
   * Allocates a labelled buffer. Sizes above the device's limits fail at once
   * with the bytes asked for and the limit; an out-of-memory reported by the
   * driver is thrown at the next {@link Gpu.check}.
   *
   * @param label Names the buffer in errors and debuggers.
   * @param size Bytes; rounded up to a multiple of 4.
   * @param usage `GPUBufferUsage` flags.
   * @returns The buffer.
   */
  createBuffer(label: string, size: number, usage: GPUBufferUsageFlags): GPUBuffer {
    const bytes = Math.max(4, Math.ceil(size / 4) * 4);
    const limit = this.limits.maxBufferSize;
    if (bytes > limit) {
      throw new GpuOutOfMemoryError(
        `Buffer "${label}" needs ${formatBytes(bytes)} but this device allows ${
          formatBytes(limit)
        } per buffer; ` +
          "lower batch_size, block_size or n_embd",
      );
    }
    this.device.pushErrorScope("out-of-memory");
    const buffer = this.device.createBuffer({ label, size: bytes, usage });
    this.stats.buffers++;
    this.stats.bytes += bytes;
    this.#trackAllocation("buffer", label, bytes);
    return buffer;
  }

  /**
   * Allocates a labelled 2D texture that compute shaders read with `textureLoad`
   * and copies fill from buffers. It lives as long as the device.
   *
   * @param label Names the texture in errors and debuggers.
   * @param size Width and height in texels, each at most `limits.maxTextureDimension2D`.
   * @param format `rgba32float` or `rgba16float`.
   * @returns The texture.
   */
  createTexture(
    label: string,
    size: readonly [number, number],
    format: "rgba32float" | "rgba16float",
  ): GPUTexture {
    const limit = this.limits.maxTextureDimension2D;
    if (size[0] > limit || size[1] > limit) {
      throw new GpuOutOfMemoryError(
        `Texture "${label}" needs ${size[0]}x${size[1]} texels but this device allows ${limit} per side; ` +
          "lower batch_size, block_size or n_embd",
      );
    }
    const bytes = size[0] * size[1] * (format === "rgba32float" ? 16 : 8);
    this.device.pushErrorScope("out-of-memory");
    const texture = this.device.createTexture({
      label,
      size: [size[0], size[1]],
      format,
      usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
    });
    this.stats.textures++;
    this.stats.bytes += bytes;
    this.#trackAllocation("texture", label, bytes);
    return texture;
  }

  #trackAllocation(kind: string, label: string, bytes: number): void {
    this.track(
      this.device.popErrorScope().then((error) =>
        error
          ? new GpuOutOfMemoryError(
            `Out of GPU memory allocating ${kind} "${label}" (${
              formatBytes(bytes)
            }); lower batch_size, block_size or n_embd`,
          )
          : null
      ),
    );
  }

  /**
   * Allocates a tensor in a buffer of its own.
   *
   * @param shape Dimensions, outermost first.
   * @param dtype Element type. Default `"f32"`.
   * @param options A label and optional initial data.
   * @returns The tensor.
   * @example
   * ```ts
   * const gpu = await requestGpu();
   * const x = gpu.tensor([2, 3], "f32", { label: "x", data: [1, 2, 3, 4, 5, 6] });
   * console.log(await gpu.read(x)); // Float32Array(6) [1, 2, 3, 4, 5, 6]
   * ```
   */
  tensor(
    shape: readonly number[],
    dtype: DType = "f32",
    options: { label?: string; data?: TensorData } = {},
  ): Tensor {
    const label = options.label ?? `tensor[${shape.join(",")}]`;
    const length = shape.reduce((a, b) => a * b, 1);
    if (!Number.isInteger(length) || length < 0) {
      throw new GpuError(`Tensor "${label}" has an invalid shape [${shape.join(", ")}]`);
    }
    const bytes = length * Tensor.bytesPerElement(dtype);
    const buffer = this.createBuffer(
      label,
      bytes,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    );
    const tensor = new Tensor(buffer, 0, shape, dtype, label);
    if (options.data !== undefined) this.write(tensor, options.data);
    return tensor;
  }

  /**
   * Copies host data into a tensor (f16 tensors take f32 values and round them).
   *
   * @param tensor The destination.
   * @param data As many values as the tensor has elements.
   */
  write(tensor: Tensor, data: TensorData): void {
    writeTensor(this, tensor, data);
  }

  /**
   * Reads a tensor back: f32 and f16 as `Float32Array`, u32 as `Uint32Array`,
   * i32 as `Int32Array`. Waits for submitted work and throws any pending error.
   *
   * @param tensor The tensor to read.
   * @returns A fresh host array.
   */
  read(tensor: Tensor): Promise<Float32Array | Uint32Array | Int32Array> {
    return readBack(this, tensor);
  }

  /**
   * Reads an f32 or f16 tensor back as floats.
   *
   * @param tensor An f32 or f16 tensor.
   * @returns A fresh `Float32Array`.
   */
  async readFloats(tensor: Tensor): Promise<Float32Array> {
    if (tensor.dtype !== "f32" && tensor.dtype !== "f16") {
      throw new GpuError(`readFloats needs an f32 or f16 tensor, "${tensor.label}" is ${tensor.dtype}`);
    }
    return (await readBack(this, tensor)) as Float32Array;
  }

  /**
   * Starts recording GPU work; submit it with {@link Recorder.submit}.
   *
   * @param options A timer for per-kernel timing, or a label.
   * @returns A recorder.
   */
  recorder(options: RecorderOptions = {}): Recorder {
    return new Recorder(this, options);
  }

  /**
   * Destroys a tensor's buffer and forgets its bind groups. Views share their
   * parent's buffer: destroy the parent.
   *
   * @param tensor The tensor whose buffer to free.
   */
  release(tensor: Tensor): void {
    this.bindGroups.forget(tensor.buffer);
    this.stats.bytes -= tensor.buffer.size;
    tensor.buffer.destroy();
  }

  /**
   * Frees a texture made by {@link Gpu.createTexture}.
   *
   * @param texture The texture; unusable afterwards.
   */
  destroyTexture(texture: GPUTexture): void {
    this.stats.bytes -= texture.width * texture.height * (texture.format === "rgba32float" ? 16 : 8);
    texture.destroy();
  }

  /** Destroys the device; a loss caused by this is not reported as an error. */
  destroy(): void {
    this.#destroyed = true;
    this.device.destroy();
  }
}

/** Converts a WebGPU error object into a {@link GpuError} with a one-line message. */
function toGpuError(error: GPUError): GpuError {
  if (error instanceof GPUOutOfMemoryError) {
    return new GpuOutOfMemoryError(
      `Out of GPU memory: ${firstLine(error.message)}; lower batch_size, block_size or n_embd`,
    );
  }
  const lines = error.message.trim().split("\n");
  return new GpuError(`GPU error: ${lines[0]}`, lines.slice(1).join("\n"));
}

function firstLine(text: string): string {
  return text.trim().split("\n")[0];
}

/**
 * Requests a high-performance adapter and a device with the adapter's real
 * limits and the optional features asked for. When `shader-f16` is on it is
 * checked against the CPU at once; if it gives wrong answers (Deno has had a bug
 * where f16 compute returns zeros) f16 is switched off and
 * {@link Gpu.f16Problem} says why.
 *
 * @param options Which features to use and the power preference.
 * @returns The device.
 * @throws {NoAdapterError} When no adapter exists.
 * @throws {MissingFeatureError} When a feature marked `"require"` is absent.
 * @example
 * ```ts
 * import { requestGpu } from "jsr:@webgpu-llm/core";
 * const gpu = await requestGpu({ f16: "auto" });
 * console.log(gpu.info.name, gpu.features);
 * ```
 */
export async function requestGpu(options: GpuOptions = {}): Promise<Gpu> {
  const vulkanOnly = prepareEnvironment();
  if (typeof navigator === "undefined" || !navigator.gpu) {
    throw new GpuError("This runtime has no WebGPU (navigator.gpu); use Deno 2.9 or newer");
  }
  const adapter = await navigator.gpu.requestAdapter({
    powerPreference: options.powerPreference ?? "high-performance",
  });
  if (!adapter) throw new NoAdapterError(vulkanOnly);
  const info = summarizeAdapter(adapter);

  const wanted: [GPUFeatureName, FeatureWish][] = [
    ["shader-f16", options.f16 ?? "auto"],
    ["timestamp-query", options.timestamps ?? "auto"],
    ["subgroups" as GPUFeatureName, "auto"],
  ];
  const requiredFeatures: GPUFeatureName[] = [];
  for (const [feature, wish] of wanted) {
    if (wish === "off") continue;
    if (adapter.features.has(feature)) requiredFeatures.push(feature);
    else if (wish === "require") throw new MissingFeatureError(feature, info.name);
  }
  const requiredLimits: Record<string, number> = {};
  for (const name of LIMIT_NAMES) {
    const value = adapter.limits[name];
    if (typeof value === "number") requiredLimits[name] = value;
  }
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ label: "webgpu-llm", requiredFeatures, requiredLimits });
  } catch (error) {
    throw new GpuError(`The adapter "${info.name}" refused a device: ${firstLine(String(error))}`);
  }
  const gpu = new Gpu(adapter, device, info);
  if (info.fallback) gpu.loopLimit = await measureLoopLimit(gpu);
  if (gpu.features.f16) {
    const verdict = await checkF16(gpu);
    if (!verdict.ok) {
      gpu.features.f16 = false;
      gpu.f16Problem = verdict.reason;
      if (options.f16 === "require") {
        throw new GpuError(`shader-f16 is offered but unusable on "${info.name}": ${verdict.reason}`);
      }
    }
  }
  return gpu;
}

/**
 * Settings wgpu reads once, when it first starts, so they are made here, before
 * the first adapter request, where the env permission allows:
 * - `XDG_RUNTIME_DIR`: the Vulkan loader complains on stderr when it is unset,
 *   as it is in containers and CI; /tmp will do.
 * - `DENO_WEBGPU_BACKEND`: on Linux wgpu would also start its OpenGL backend,
 *   loading libEGL, whose exit-time destructor races with exiting threads and
 *   now and then aborts the process ("double free or corruption", about 2% of
 *   runs with Mesa). Vulkan is what we need (OpenGL offers no f16), so ask for
 *   Vulkan alone unless the user chose a backend.
 */
function prepareEnvironment(): boolean {
  const allowed = (variable: string) =>
    Deno.permissions.querySync({ name: "env", variable }).state === "granted";
  if (allowed("XDG_RUNTIME_DIR") && !Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
  if (Deno.build.os !== "linux" || !allowed("DENO_WEBGPU_BACKEND")) return false;
  if (Deno.env.get("DENO_WEBGPU_BACKEND")) return false;
  Deno.env.set("DENO_WEBGPU_BACKEND", "vulkan");
  return true;
}

function summarizeAdapter(adapter: GPUAdapter): AdapterSummary {
  const raw = adapter.info;
  const features = [...adapter.features].sort();
  const fallback = Boolean((raw as { isFallbackAdapter?: boolean }).isFallbackAdapter) ||
    /llvmpipe|lavapipe|swiftshader|software/i.test(raw.description);
  return {
    name: raw.description || raw.device || "unknown adapter",
    vendor: vendorName(raw.vendor),
    architecture: raw.architecture,
    backend: inferBackend(adapter),
    fallback,
    features,
  };
}

const PCI_VENDORS: Record<number, string> = {
  0x10de: "NVIDIA",
  0x1002: "AMD",
  0x8086: "Intel",
  0x10005: "Mesa",
  0x13b5: "ARM",
  0x5143: "Qualcomm",
  0x106b: "Apple",
};

function vendorName(vendor: string): string {
  const id = Number(vendor);
  if (vendor !== "" && Number.isInteger(id)) {
    return PCI_VENDORS[id] ? `${PCI_VENDORS[id]} (0x${id.toString(16)})` : `0x${id.toString(16)}`;
  }
  return vendor || "unknown";
}

/**
 * WebGPU does not say which native API an adapter sits on. wgpu reports real
 * subgroup sizes on Vulkan, Metal and D3D12 but its placeholder range 4..128 on
 * GL, and never offers `shader-f16` through GL; that is enough to tell them apart.
 */
function inferBackend(adapter: GPUAdapter): string {
  const info = adapter.info as { subgroupMinSize?: number; subgroupMaxSize?: number };
  const placeholderSubgroups = info.subgroupMinSize === 4 && info.subgroupMaxSize === 128;
  if (placeholderSubgroups && !adapter.features.has("shader-f16")) return "OpenGL (inferred)";
  switch (Deno.build.os) {
    case "darwin":
      return "Metal (inferred)";
    case "windows":
      return "D3D12 or Vulkan (inferred)";
    default:
      return "Vulkan (inferred)";
  }
}
