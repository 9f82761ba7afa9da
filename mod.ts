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

export { add, cast, fill, recordElementwise, scale } from "./kernels/elementwise.ts";
export { matmul, matmulNaive } from "./kernels/matmul.ts";
export { residualRmsnormForward, rmsnormBackward, rmsnormForward } from "./kernels/rmsnorm.ts";
export { swigluBackward, swigluForward } from "./kernels/swiglu.ts";
export { ropeBackward, ropeForward } from "./kernels/rope.ts";
export { attentionBackward, attentionForward } from "./kernels/attention.ts";
export {
  buildEmbeddingIndex,
  embeddingBackward,
  embeddingForward,
  EmbeddingIndexBuffer,
} from "./kernels/embedding.ts";
export {
  crossEntropyBackward,
  crossEntropyForward,
  IGNORE_INDEX,
  lossMean,
} from "./kernels/cross_entropy.ts";
export { dropout, dropoutAdd, dropoutBackward, DropoutSeed } from "./kernels/dropout.ts";
export { AdamW, buildDecayMask } from "./kernels/adamw.ts";
export { GradNorm, Reduction } from "./kernels/reduce.ts";

export { ConfigError, defaultMlpHidden, resolveModelConfig } from "./model/config.ts";
export type { ModelConfig } from "./model/config.ts";
export { initialParameters, parameterCounts, paramLayout } from "./model/params.ts";
export type { ParamLayout, ParamTensor } from "./model/params.ts";
export { Rng } from "./model/rng.ts";
export { flopsPerToken, Llama } from "./model/model.ts";
export type { Batch, DropoutStep, KvCache } from "./model/model.ts";
export { FlatViews } from "./model/weights.ts";
export type { LayerViews } from "./model/weights.ts";
export { Generator } from "./model/generate.ts";
export type { GenerateOptions, GenerateStep } from "./model/generate.ts";
export { penalize, sampleToken, samplingDistribution } from "./model/sampling.ts";
export type { SamplingOptions } from "./model/sampling.ts";
export { LossScaler } from "./kernels/loss_scale.ts";
export type { LossScalerOptions, LossScaleState } from "./kernels/loss_scale.ts";
export { cachedAttention, kvCacheWrite, selectPosition } from "./kernels/kv_cache.ts";
export type { CacheHeads } from "./kernels/kv_cache.ts";
export { Trainer } from "./model/trainer.ts";
export type { StepResult, TrainingData } from "./model/trainer.ts";
export { runTraining } from "./model/train_loop.ts";
export type { EvalMetrics, LogMetrics, TrainingHooks, TrainingOutcome } from "./model/train_loop.ts";
export { applyOverrides, learningRate, loadConfigFile, TRAIN_DEFAULTS } from "./model/train_config.ts";
export type { TrainConfig } from "./model/train_config.ts";
export { loadCheckpoint, saveCheckpoint } from "./model/checkpoint.ts";
export type { Checkpoint, TrainingState } from "./model/checkpoint.ts";
export { splitLoss } from "./model/evaluate.ts";
export { loadTokenizer, tokenizerFromMeta } from "./model/tokenizer.ts";
export type { Tokenizer, TokenizerName } from "./model/tokenizer.ts";
export { prepareDataset } from "./model/prepare.ts";
export { readMeta, readTokens } from "./model/meta.ts";
export type { DatasetMeta } from "./model/meta.ts";

export type { AdamWHyper, DecayRange } from "./kernels/adamw.ts";
export type { AttentionBackwardArgs, AttentionForwardArgs, AttentionPlan } from "./kernels/attention.ts";
export type {
  CrossEntropyBackwardArgs,
  CrossEntropyForwardArgs,
  LossMeanArgs,
} from "./kernels/cross_entropy.ts";
export type { EmbeddingBackwardArgs, EmbeddingForwardArgs, EmbeddingIndex } from "./kernels/embedding.ts";
export type { MatmulArgs, MatmulTile } from "./kernels/matmul.ts";
export type { ReduceOp, ReductionChunk } from "./kernels/reduce.ts";
export type { RopeOptions } from "./kernels/rope.ts";
export type { StorageDecl } from "./kernels/wgsl.ts";
export type { Activations, LayerActivations } from "./model/activations.ts";
export type { HostBatch } from "./model/batches.ts";
export type { BpeName } from "./model/bpe.ts";
export type { SplitLoss } from "./model/evaluate.ts";
export type { Split, TokenArray, TokenDType } from "./model/meta.ts";
export type { LayerParams, ParamInit } from "./model/params.ts";
export type { PrepareOptions, PrepareProgress, PrepareResult } from "./model/prepare.ts";
