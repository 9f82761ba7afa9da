/**
 * webgpu-llm: train and sample LLaMA-style language models from scratch on a GPU
 * through WebGPU, with hand-written WGSL kernels for every forward and backward op.
 *
 * The pieces, in the order a program uses them: {@link requestGpu} gets a device;
 * {@link prepareDataset} and {@link loadDataset} turn text into token files and
 * back; {@link trainConfig} and {@link Trainer} with {@link runTraining} train a
 * model (callbacks report the loss and evaluations; checkpoints are written as
 * safetensors); {@link loadCheckpoint}, {@link Generator} and {@link generateText}
 * stream text from one; {@link Llama} runs a model directly. The kernels
 * themselves are the `./kernels` entry point.
 *
 * @example Train a small model on Tiny Shakespeare, then sample from it
 * ```ts
 * import {
 *   Generator, generateText, loadDataset, modelConfigFor, prepareDataset, requestGpu,
 *   runTraining, tokenizerFromMeta, trainConfig, Trainer,
 * } from "@webgpu-llm/core";
 *
 * const gpu = await requestGpu();
 * await prepareDataset({ input: "input.txt", out: "data/mine", tokenizer: "char" });
 * const data = await loadDataset("data/mine");
 * const config = trainConfig({ n_layer: 2, n_head: 2, n_embd: 64, max_iters: 500, out_dir: "out-mine" });
 * const trainer = Trainer.create(gpu, config, modelConfigFor(config, data.meta.vocab_size), data);
 * await runTraining(trainer, { onEval: (m) => console.log(`step ${m.iteration}: val ${m.valLoss}`) });
 *
 * const generator = new Generator(gpu, { config: trainer.model.config, params: await trainer.model.download() }, {
 *   batchSize: 1,
 * });
 * const tokenizer = await tokenizerFromMeta(data.meta);
 * for await (const [text] of generateText(generator, tokenizer, "ROMEO:", { maxNewTokens: 100 })) {
 *   await Deno.stdout.write(new TextEncoder().encode(text));
 * }
 * ```
 *
 * @module
 */

// The device.
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
export type { DType, TensorData } from "./kernels/tensor.ts";
// Types the model's classes expose; their functions live in the ./kernels entry point.
export type { Recorder, RecorderOptions, Workgroups } from "./kernels/recorder.ts";
export type { StagedTexels } from "./kernels/texels.ts";
export type { TexelCache } from "./kernels/texel_cache.ts";
export type { GpuTimer, KernelTime } from "./kernels/timer.ts";
export type { KernelTuning, TuneOptions, TuningSummary } from "./kernels/tune.ts";
export type { AttentionPlan } from "./kernels/attention.ts";
export type { MatmulChoice, MatmulProblem, MatmulTile } from "./kernels/matmul.ts";
export type { TexelTile } from "./kernels/matmul_texel.ts";
export type { BindGroupCache, Binding, PipelineCache } from "./kernels/pipeline.ts";
export type { EmbeddingIndexBuffer } from "./kernels/embedding.ts";
export type { DropoutSeed } from "./kernels/dropout.ts";
export type { LossScaleState } from "./kernels/loss_scale.ts";
export type { NonFiniteReport } from "./kernels/nonfinite.ts";

// Data and tokenizers.
export { prepareDataset } from "./model/prepare.ts";
export type { PrepareOptions, PrepareProgress, PrepareResult } from "./model/prepare.ts";
export { loadDataset, readMeta, readTokens } from "./model/meta.ts";
export type { DatasetMeta, Split, TokenArray, TokenDType } from "./model/meta.ts";
export { loadTokenizer, tokenizerFromMeta } from "./model/tokenizer.ts";
export type { Tokenizer, TokenizerName } from "./model/tokenizer.ts";
export type { BpeName } from "./model/bpe.ts";
export { DataError } from "./model/errors.ts";

// The model.
export { ConfigError, resolveModelConfig } from "./model/config.ts";
export type { ModelConfig } from "./model/config.ts";
export { Llama } from "./model/model.ts";
export type { Batch, DropoutStep, KvCache, LlamaOptions } from "./model/model.ts";
export { parameterCounts, paramLayout } from "./model/params.ts";
export type { LayerParams, ParamInit, ParamLayout, ParamTensor } from "./model/params.ts";
export type { FlatViews, LayerViews } from "./model/weights.ts";
export type { Activations, LayerActivations } from "./model/activations.ts";
export { Rng } from "./model/rng.ts";

// Training.
export {
  learningRate,
  modelConfigFor,
  TRAIN_DEFAULTS,
  trainConfig,
  tunesKernels,
} from "./model/train_config.ts";
export type { TrainConfig } from "./model/train_config.ts";
export { Trainer } from "./model/trainer.ts";
export type { StepResult, TrainingData } from "./model/trainer.ts";
export type { HostBatch } from "./model/batches.ts";
export { runTraining, TrainingFault } from "./model/train_loop.ts";
export type {
  EvalMetrics,
  LogMetrics,
  TrainingHooks,
  TrainingOutcome,
  TrainingRun,
} from "./model/train_loop.ts";
export { splitLoss } from "./model/evaluate.ts";
export type { SplitLoss } from "./model/evaluate.ts";

// Checkpoints.
export { loadCheckpoint, saveCheckpoint } from "./model/checkpoint.ts";
export { SafetensorsError } from "./model/safetensors.ts";
export type { Checkpoint, TrainingState } from "./model/checkpoint.ts";

// Generation.
export { Generator } from "./model/generate.ts";
export type { GenerateOptions, GenerateStep } from "./model/generate.ts";
export { generateText } from "./model/text_generation.ts";
export type { TextGenerationOptions } from "./model/text_generation.ts";
export type { SamplingOptions } from "./model/sampling.ts";

// Hugging Face folders and loss plots.
export { exportHfModel } from "./model/hf_export.ts";
export type { ExportDType } from "./model/hf_export.ts";
export { loadHfModel } from "./model/hf.ts";
export type { HfModel } from "./model/hf.ts";
export type { HfWeights } from "./model/hf_import.ts";
export { readRunMetrics, writeLossPlot } from "./model/loss_plot.ts";
export type { RunMetrics } from "./model/loss_plot.ts";

// LoRA fine-tuning.
export { LORA_DEFAULTS, LORA_TARGETS, mergeLora } from "./model/lora.ts";
export type {
  LoraConfig,
  LoraLayout,
  LoraModule,
  LoraTarget,
  LoraTensor,
  ProjectionSite,
} from "./model/lora.ts";
export type { LoraAdapters } from "./model/lora_adapters.ts";
export { LoraTrainer } from "./model/lora_trainer.ts";
export type { LoraTrainerOptions } from "./model/lora_trainer.ts";
export { loadLoraAdapter, mergeAdapterFile, saveLoraAdapter } from "./model/lora_file.ts";
export type { LoraAdapterFile } from "./model/lora_file.ts";
export type { LoraState } from "./model/lora_state.ts";
