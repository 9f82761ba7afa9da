/**
 * The GPU layer of webgpu-llm on its own: every forward and backward op of a
 * LLaMA model as a WGSL kernel with a function that records its dispatches, the
 * recorder that batches them into one compute pass, and the caches, timers and
 * reductions around them. Each op takes a {@link Recorder} and one arguments
 * object (outputs, saved statistics, inputs, weights, then sizes), and checks
 * the shapes of the tensors it is given.
 *
 * Use it to build a different model from the same kernels, or to time one op.
 * The model, training and sampling API is the package's main entry point.
 *
 * @example
 * ```ts
 * import { matmul, Recorder, requestGpu } from "@webgpu-llm/core/kernels";
 *
 * const gpu = await requestGpu();
 * const a = gpu.tensor([2, 3], "f32", { data: [1, 2, 3, 4, 5, 6] });
 * const b = gpu.tensor([3, 2], "f32", { data: [1, 0, 0, 1, 1, 1] });
 * const c = gpu.tensor([2, 2], "f32");
 * const rec = new Recorder(gpu);
 * matmul(rec, { out: c, a, b });
 * rec.submit();
 * console.log(await gpu.read(c)); // Float32Array(4) [4, 5, 10, 11]
 * ```
 *
 * @module
 */

export { Gpu, requestGpu } from "./device.ts";
export type { AdapterSummary, FeatureWish, GpuFeatures, GpuLimits, GpuOptions, GpuStats } from "./device.ts";
export {
  DeviceLostError,
  GpuError,
  GpuOutOfMemoryError,
  MissingFeatureError,
  NoAdapterError,
  ShaderCompileError,
} from "./errors.ts";
export { Tensor } from "./tensor.ts";
export type { DType, TensorData } from "./tensor.ts";
export { grid, Recorder } from "./recorder.ts";
export type { RecorderOptions, Workgroups } from "./recorder.ts";
export { TexelCache } from "./texel_cache.ts";
export type { StagedTexels } from "./texels.ts";
export { BindGroupCache, PipelineCache } from "./pipeline.ts";
export type { Binding } from "./pipeline.ts";
export { GpuTimer, totalsByLabel } from "./timer.ts";
export type { KernelTime } from "./timer.ts";
export { runSelfTest } from "./selftest.ts";
export type { SelfTestResult } from "./selftest.ts";

export { add, cast, fill, scale } from "./elementwise.ts";
export { addColumns, copyColumns } from "./columns.ts";
export { matmul, matmulNaive } from "./matmul.ts";
export type { MatmulArgs, MatmulChoice, MatmulProblem, MatmulTile } from "./matmul.ts";
export type { TexelTile } from "./matmul_texel.ts";
export { matmulCandidates, matmulChoiceName } from "./matmul_tune.ts";
export { attentionCandidates, planName } from "./attention_tune.ts";
export { timeTuning, tunedSpeedup, tuneKernels, tuningLine, tuningWanted } from "./tune.ts";
export type { KernelTuning, TuneOptions, TuningSummary } from "./tune.ts";
export { residualRmsnormForward, rmsnormBackward, rmsnormForward } from "./rmsnorm.ts";
export type { RmsnormBackwardArgs, RmsnormForwardArgs } from "./rmsnorm.ts";
export { swigluBackward, swigluForward } from "./swiglu.ts";
export { ropeBackward, ropeForward } from "./rope.ts";
export type { RopeOptions } from "./rope.ts";
export { attentionBackward, attentionForward } from "./attention.ts";
export type { AttentionBackwardArgs, AttentionForwardArgs, AttentionPlan } from "./attention.ts";
export { cachedAttention } from "./cached_attention.ts";
export type { CachedAttentionArgs } from "./cached_attention.ts";
export { kvCacheWrite, selectPosition } from "./kv_cache.ts";
export { advanceDecodeStep, sampleNextTokens } from "./draw.ts";
export type { CacheHeads } from "./kv_cache.ts";
export { DECODE_LANES, decodeLayer, decodeLayerFits } from "./decode_layer.ts";
export type { DecodeLayerShape, LayerWeights } from "./decode_layer.ts";
export {
  buildEmbeddingIndex,
  embeddingBackward,
  embeddingForward,
  EmbeddingIndexBuffer,
} from "./embedding.ts";
export type { EmbeddingBackwardArgs, EmbeddingForwardArgs, EmbeddingIndex } from "./embedding.ts";
export { crossEntropyBackward, crossEntropyForward, IGNORE_INDEX, lossMean } from "./cross_entropy.ts";
export type { CrossEntropyBackwardArgs, CrossEntropyForwardArgs, LossMeanArgs } from "./cross_entropy.ts";
export { dropout, dropoutAdd, dropoutBackward, DropoutSeed } from "./dropout.ts";
export { AdamW, buildDecayMask } from "./adamw.ts";
export type { AdamWHyper, DecayRange } from "./adamw.ts";
export { GradNorm, Reduction } from "./reduce.ts";
export type { ReduceOp, ReductionChunk, ReductionOptions } from "./reduce.ts";
export { NonFiniteWatch } from "./nonfinite.ts";
export type { NonFiniteReport } from "./nonfinite.ts";
export { LossScaler } from "./loss_scale.ts";
export type { LossScalerOptions, LossScaleState } from "./loss_scale.ts";
