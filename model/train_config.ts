/**
 * Training settings: one grouped object of commented defaults named as nanoGPT
 * names them, overridden by a JSON config file and then `--key=value` flags.
 * Unknown keys are refused with the list of known ones.
 *
 * @module
 */

import { tuningWanted } from "../kernels/tune.ts";
import { ConfigError, MODEL_KEYS, type ModelConfig, resolveModelConfig } from "./config.ts";

/**
 * Every training setting, model fields included, by nanoGPT's names. Build one
 * with {@link trainConfig}; a trainer and each checkpoint keep theirs.
 *
 * @example
 * ```ts
 * const config: TrainConfig = trainConfig({ dataset: "shakespeare_char", batch_size: 32, dropout: 0.1 });
 * console.log(config.learning_rate, config.max_iters, config.out_dir); // 0.001 2000 out
 * ```
 */
export interface TrainConfig {
  // I/O: where checkpoints and metrics go, how often we look at the loss.
  /** Folder for ckpt.safetensors and metrics.jsonl. */
  out_dir: string;
  /** Evaluate train and val loss every this many iterations. */
  eval_interval: number;
  /** Print a log line every this many iterations. */
  log_interval: number;
  /** Batches averaged per evaluation. */
  eval_iters: number;
  /** Evaluate once and exit. */
  eval_only: boolean;
  /** Save at every evaluation, not only when val loss improves. */
  always_save_checkpoint: boolean;
  /** Skip steps whose loss or gradient is NaN or infinite and go on, instead of stopping at the first. */
  skip_nonfinite: boolean;
  /** "scratch", "resume" from out_dir's checkpoint, or "hf:DIR" to start from a Hugging Face LLaMA folder. */
  init_from: string;

  // Data: what to read and how much per step.
  /** A prepared folder: a path, or a name under data/. */
  dataset: string;
  /** Micro-batches summed per optimizer step (simulates a larger batch). */
  gradient_accumulation_steps: number;
  /** Sequences per micro-batch. */
  batch_size: number;

  // Model: see ModelConfig. vocab_size 0 means "from the dataset's meta.json".
  /** Transformer blocks. */
  n_layer: number;
  /** Query heads. */
  n_head: number;
  /** Key/value heads; 0 means n_head (no grouping). */
  n_kv_head: number;
  /** Residual width. */
  n_embd: number;
  /** Context length. */
  block_size: number;
  /** Vocabulary; 0 takes it from the dataset. */
  vocab_size: number;
  /** SwiGLU width; 0 means 8/3·n_embd rounded up to 64. */
  mlp_hidden: number;
  /** RoPE base. */
  rope_theta: number;
  /** RMSNorm epsilon. */
  norm_eps: number;
  /** Share the embedding with lm_head. */
  tie_embeddings: boolean;
  /** Dropout probability (0 for pretraining large models, 0.2 for small data). */
  dropout: number;

  // AdamW.
  /** Peak learning rate. */
  learning_rate: number;
  /** Total optimizer steps. */
  max_iters: number;
  /** Decoupled weight decay, on matrices only. */
  weight_decay: number;
  /** Adam beta1. */
  beta1: number;
  /** Adam beta2 (0.99 suits small batches). */
  beta2: number;
  /** Clip the global gradient norm to this (0 disables). */
  grad_clip: number;

  // Learning-rate schedule: linear warmup, then cosine decay to min_lr.
  /** Use the schedule (else a constant learning_rate). */
  decay_lr: boolean;
  /** Warmup steps. */
  warmup_iters: number;
  /** Step at which the cosine reaches min_lr (nanoGPT: about max_iters). */
  lr_decay_iters: number;
  /** Floor of the schedule (nanoGPT: learning_rate / 10). */
  min_lr: number;

  // System.
  /** Seeds initialisation, batches and dropout. */
  seed: number;
  /** Compute precision: "f32", or "f16" (f32 master weights, dynamic loss scaling). */
  dtype: string;
  /** Peak FLOP/s used for MFU; 0 measures this adapter's FMA peak at start. */
  peak_flops: number;
  /**
   * Time each matmul's blockings and the attention's plans on this device before
   * the first step and use the fastest: "on", "off", or "auto" (on for GPUs, off
   * for software adapters, where compiling the candidates takes longer than they
   * save). Never changes results.
   */
  tune_kernels: string;
}

/**
 * nanoGPT's defaults shrunk to something that trains on Tiny Shakespeare in
 * minutes: the `baby` configuration (nanoGPT's CPU settings for shakespeare_char).
 *
 * @example
 * ```ts
 * console.log(TRAIN_DEFAULTS.n_layer, TRAIN_DEFAULTS.n_embd, TRAIN_DEFAULTS.block_size); // 4 128 64
 * const longer = trainConfig({ max_iters: 2 * TRAIN_DEFAULTS.max_iters, lr_decay_iters: 4000 });
 * ```
 */
export const TRAIN_DEFAULTS: Readonly<TrainConfig> = Object.freeze({
  out_dir: "out",
  eval_interval: 250,
  log_interval: 10,
  eval_iters: 20,
  eval_only: false,
  always_save_checkpoint: false,
  skip_nonfinite: false,
  init_from: "scratch",

  dataset: "shakespeare_char",
  gradient_accumulation_steps: 1,
  batch_size: 12,

  n_layer: 4,
  n_head: 4,
  n_kv_head: 0,
  n_embd: 128,
  block_size: 64,
  vocab_size: 0,
  mlp_hidden: 0,
  rope_theta: 10000,
  norm_eps: 1e-5,
  tie_embeddings: true,
  dropout: 0,

  learning_rate: 1e-3,
  max_iters: 2000,
  weight_decay: 0.1,
  beta1: 0.9,
  beta2: 0.99,
  grad_clip: 1.0,

  decay_lr: true,
  warmup_iters: 100,
  lr_decay_iters: 2000,
  min_lr: 1e-4,

  seed: 1337,
  dtype: "f32",
  peak_flops: 0,
  tune_kernels: "auto",
});

/** Every accepted key. */
export const TRAIN_KEYS: readonly (keyof TrainConfig)[] = Object.keys(
  TRAIN_DEFAULTS,
) as (keyof TrainConfig)[];

/**
 * Merges `overrides` into `base`, converting strings from flags to the type of
 * each default and refusing unknown keys and bad values.
 *
 * @param base The config so far.
 * @param overrides Values from a JSON file (typed) or flags (strings).
 * @param source Where they came from, for messages (`config/baby.json`, `flags`).
 * @returns A new config.
 * @throws {ConfigError} On an unknown key or a value of the wrong type.
 * @example
 * ```ts
 * const config = applyOverrides(TRAIN_DEFAULTS, { batch_size: "32" }, "flags");
 * ```
 */
export function applyOverrides(
  base: Readonly<TrainConfig>,
  overrides: Record<string, unknown>,
  source: string,
): TrainConfig {
  const result: TrainConfig = { ...base };
  for (const [key, raw] of Object.entries(overrides)) {
    if (!(key in TRAIN_DEFAULTS)) {
      throw new ConfigError(
        `Unknown setting "${key}" in ${source}; known settings: ${TRAIN_KEYS.join(", ")}`,
      );
    }
    const typedKey = key as keyof TrainConfig;
    const kind = typeof TRAIN_DEFAULTS[typedKey];
    (result as unknown as Record<string, unknown>)[key] = convert(key, raw, kind, source);
  }
  return result;
}

function convert(key: string, raw: unknown, kind: string, source: string): unknown {
  const bad = (what: string) =>
    new ConfigError(`Setting ${key} in ${source} must be ${what}, got ${JSON.stringify(raw)}`);
  if (kind === "number") {
    const value = typeof raw === "string" && raw.trim() !== "" ? Number(raw) : raw;
    if (typeof value !== "number" || !Number.isFinite(value)) throw bad("a number");
    return value;
  }
  if (kind === "boolean") {
    if (raw === true || raw === "true" || raw === "1" || raw === "") return true;
    if (raw === false || raw === "false" || raw === "0") return false;
    throw bad("true or false");
  }
  if (typeof raw !== "string") throw bad("a string");
  return raw;
}

/**
 * Checks the training (non-model) settings; the model's are checked by
 * `resolveModelConfig`.
 *
 * @param config The merged config.
 * @throws {ConfigError} On the first bad value.
 */
export function validateTrainConfig(config: TrainConfig): void {
  const positive = [
    "batch_size",
    "gradient_accumulation_steps",
    "eval_interval",
    "log_interval",
    "eval_iters",
  ] as const;
  for (const key of positive) {
    if (!Number.isInteger(config[key]) || config[key] < 1) {
      throw new ConfigError(`${key} must be a positive integer, got ${config[key]}`);
    }
  }
  const nonNegative = ["max_iters", "warmup_iters", "lr_decay_iters"] as const;
  for (const key of nonNegative) {
    if (!Number.isInteger(config[key]) || config[key] < 0) {
      throw new ConfigError(`${key} must be a non-negative integer, got ${config[key]}`);
    }
  }
  if (!(config.learning_rate > 0)) {
    throw new ConfigError(`learning_rate must be positive, got ${config.learning_rate}`);
  }
  if (!(config.min_lr >= 0)) throw new ConfigError(`min_lr must be non-negative, got ${config.min_lr}`);
  for (const key of ["beta1", "beta2"] as const) {
    if (!(config[key] >= 0 && config[key] < 1)) {
      throw new ConfigError(`${key} must be in [0, 1), got ${config[key]}`);
    }
  }
  if (!(config.weight_decay >= 0)) {
    throw new ConfigError(`weight_decay must be >= 0, got ${config.weight_decay}`);
  }
  if (!(config.grad_clip >= 0)) {
    throw new ConfigError(`grad_clip must be >= 0 (0 disables), got ${config.grad_clip}`);
  }
  if (config.dtype !== "f32" && config.dtype !== "f16") {
    throw new ConfigError(`dtype must be "f32" or "f16", got "${config.dtype}"`);
  }
  try {
    tuningWanted(config.tune_kernels, false);
  } catch (error) {
    throw new ConfigError((error as Error).message);
  }
  if (
    config.init_from !== "scratch" && config.init_from !== "resume" && !config.init_from.startsWith("hf:")
  ) {
    throw new ConfigError(
      `init_from must be "scratch", "resume" or "hf:DIR" (a Hugging Face folder), got "${config.init_from}"`,
    );
  }
  if (!Number.isInteger(config.seed)) throw new ConfigError(`seed must be an integer, got ${config.seed}`);
}

/**
 * Whether a run with `config` tunes its kernels (see `tune_kernels`).
 *
 * @param config The training config.
 * @param softwareAdapter Whether the device is a software adapter (a CPU).
 * @returns True to call `tuneKernels` before the first step.
 * @example
 * ```ts
 * if (tunesKernels(config, gpu.info.fallback)) await trainer.tuneKernels();
 * ```
 */
export function tunesKernels(config: TrainConfig, softwareAdapter: boolean): boolean {
  return tuningWanted(config.tune_kernels, softwareAdapter);
}

/**
 * A complete training config: the defaults ({@link TRAIN_DEFAULTS}, nanoGPT's
 * "baby" model) with `settings` over them, checked.
 *
 * @param settings The settings to change, by nanoGPT's names.
 * @returns The config.
 * @throws {ConfigError} When a value is out of range or the model's shape is inconsistent.
 * @example
 * ```ts
 * const config = trainConfig({ n_layer: 2, n_embd: 64, max_iters: 500, out_dir: "out-small" });
 * ```
 */
export function trainConfig(settings: Partial<TrainConfig> = {}): TrainConfig {
  for (const key of Object.keys(settings)) {
    if (!(key in TRAIN_DEFAULTS)) throw new ConfigError(`Unknown training setting "${key}"`);
  }
  const config = { ...TRAIN_DEFAULTS, ...settings };
  validateTrainConfig(config);
  modelConfigFor(config, 1); // the model's shape too, before any data is read (the vocabulary comes later)
  return config;
}

/**
 * The architecture a training config describes, for a dataset's vocabulary
 * (used when `vocab_size` is 0), with the derived fields filled and checked.
 *
 * @param config The training config.
 * @param vocabSize The dataset's vocabulary (meta.json's `vocab_size`).
 * @returns The model config.
 * @throws {ConfigError} When the shape is inconsistent (e.g. n_embd not divisible by n_head).
 * @example
 * ```ts
 * const model = modelConfigFor(trainConfig(), 65); // { n_layer: 4, n_head: 4, n_embd: 128, ... }
 * ```
 */
export function modelConfigFor(config: TrainConfig, vocabSize: number): ModelConfig {
  return resolveModelConfig(modelFields(config, vocabSize));
}

/**
 * The model part of a training config (zeros meaning "derive" left out, so
 * `resolveModelConfig` fills them).
 *
 * @param config The training config.
 * @param vocabSize The dataset's vocabulary, used when config.vocab_size is 0.
 * @returns The partial model config.
 */
export function modelFields(config: TrainConfig, vocabSize: number): Partial<ModelConfig> {
  const fields: Partial<ModelConfig> = {};
  for (const key of MODEL_KEYS) {
    const value = config[key as keyof TrainConfig];
    if (value === 0 && (key === "n_kv_head" || key === "mlp_hidden" || key === "vocab_size")) continue;
    (fields as Record<string, unknown>)[key] = value;
  }
  fields.vocab_size = config.vocab_size || vocabSize;
  return fields;
}

/**
 * The learning rate at an iteration: linear warmup to learning_rate, cosine
 * decay to min_lr at lr_decay_iters, min_lr after (nanoGPT's get_lr).
 *
 * @param config The schedule settings.
 * @param iteration The optimizer step (0-based).
 * @returns The learning rate.
 * @example
 * ```ts
 * const config = trainConfig();
 * learningRate(config, 0); // 9.9e-6: the first of 100 warmup steps
 * learningRate(config, 100); // 0.001: the peak
 * learningRate(config, 2000); // 0.0001: min_lr
 * ```
 */
export function learningRate(
  config: Pick<TrainConfig, "learning_rate" | "min_lr" | "warmup_iters" | "lr_decay_iters" | "decay_lr">,
  iteration: number,
): number {
  if (!config.decay_lr) return config.learning_rate;
  if (iteration < config.warmup_iters) {
    return (config.learning_rate * (iteration + 1)) / (config.warmup_iters + 1);
  }
  if (iteration > config.lr_decay_iters) return config.min_lr;
  const span = config.lr_decay_iters - config.warmup_iters;
  const ratio = span > 0 ? (iteration - config.warmup_iters) / span : 1;
  const coefficient = 0.5 * (1 + Math.cos(Math.PI * ratio));
  return config.min_lr + coefficient * (config.learning_rate - config.min_lr);
}

/**
 * Reads a JSON config file of training settings. Keys starting with `_` are
 * comments and ignored; any other unknown key is refused.
 *
 * @param path The file, e.g. `config/baby.json`.
 * @param base The settings to override.
 * @returns The merged config.
 * @throws {ConfigError} When the file is missing, not JSON, or has a bad key.
 */
export async function loadConfigFile(path: string, base: Readonly<TrainConfig>): Promise<TrainConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new ConfigError(`Config file "${path}" not found; the shipped ones are in config/`);
    }
    throw error;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`Config file "${path}" is not valid JSON: ${(error as Error).message}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError(`Config file "${path}" must hold a JSON object of settings`);
  }
  const settings = Object.fromEntries(Object.entries(json).filter(([key]) => !key.startsWith("_")));
  return applyOverrides(base, settings, path);
}
