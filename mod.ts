/**
 * webgpu-llm: train and sample LLaMA-style language models from scratch on a GPU
 * through WebGPU, with hand-written WGSL kernels for every forward and backward op.
 *
 * @example
 * ```ts
 * import { requestGpu } from "jsr:@webgpu-llm/core";
 *
 * const gpu = await requestGpu();
 * console.log(gpu.info.name, gpu.features);
 * const x = gpu.tensor([3], "f32", { data: [1, 2, 3] });
 * console.log(await gpu.read(x));
 * ```
 *
 * @module
 */

export { Gpu, requestGpu } from "./kernels/device.ts";
export type {
  AdapterSummary,
  FeatureWish,
  GpuFeatures,
  GpuLimits,
  GpuOptions,
  GpuStats,
} from "./kernels/device.ts";
export {
  DeviceLostError,
  GpuError,
  GpuOutOfMemoryError,
  MissingFeatureError,
  NoAdapterError,
  ShaderCompileError,
} from "./kernels/errors.ts";
export { Tensor } from "./kernels/tensor.ts";
export { BindGroupCache, PipelineCache } from "./kernels/pipeline.ts";
export type { Binding } from "./kernels/pipeline.ts";
export type { DType, TensorData } from "./kernels/tensor.ts";
export { grid, Recorder } from "./kernels/recorder.ts";
export type { RecorderOptions, Workgroups } from "./kernels/recorder.ts";
export { GpuTimer, totalsByLabel } from "./kernels/timer.ts";
export type { KernelTime } from "./kernels/timer.ts";
export { runSelfTest } from "./kernels/selftest.ts";
export type { SelfTestResult } from "./kernels/selftest.ts";
