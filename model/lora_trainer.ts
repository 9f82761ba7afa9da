/**
 * LoRA fine-tuning: the trainer's loop (random batches, gradient accumulation,
 * AdamW with warmup and cosine decay, clipping, evaluation, one submit per
 * optimizer step) over a frozen base. Only the adapters have gradients, AdamW
 * moments and a decay mask; the base weights are uploaded once and never
 * written. Saves `adapter_model.safetensors` (the adapter alone, PEFT names) with
 * PEFT's `adapter_config.json`, and `lora_state.safetensors` (moments and
 * progress, for resume) in out_dir.
 *
 * @module
 */

import { join } from "node:path";
import type { Gpu } from "../kernels/device.ts";
import type { KernelTuning, TuneOptions } from "../kernels/tune.ts";
import type { GpuTimer } from "../kernels/timer.ts";
import { checkSplit } from "./batches.ts";
import { ConfigError, type ModelConfig } from "./config.ts";
import { initialLoraParameters, type LoraConfig } from "./lora.ts";
import { LoraAdapters } from "./lora_adapters.ts";
import { baseWeightsHash, type LoraAdapterFile, peftAdapterConfig, saveLoraAdapter } from "./lora_file.ts";
import { type LoraState, saveLoraState } from "./lora_state.ts";
import { Llama } from "./model.ts";
import { Rng } from "./rng.ts";
import { StepRunner } from "./step_runner.ts";
import { learningRate, type TrainConfig } from "./train_config.ts";
import type { StepResult, TrainingData } from "./trainer.ts";

/**
 * The file names a LoRA run writes in out_dir.
 *
 * @example
 * ```ts
 * const adapter = join("out-lora", LORA_FILES.adapter); // out-lora/adapter_model.safetensors
 * ```
 */
export const LORA_FILES = {
  adapter: "adapter_model.safetensors",
  config: "adapter_config.json",
  state: "lora_state.safetensors",
} as const;

/**
 * What {@link LoraTrainer.create} needs.
 *
 * @example
 * ```ts
 * const options: LoraTrainerOptions = { base: await loadCheckpoint("out/ckpt.safetensors"), lora: LORA_DEFAULTS, data };
 * ```
 */
export interface LoraTrainerOptions {
  /** The frozen base: architecture and flat weights (a loaded checkpoint). */
  base: { config: ModelConfig; params: Float32Array };
  /** Rank, alpha, dropout, targets (ignored on resume: the saved adapter's are used). */
  lora: LoraConfig;
  /** Training and validation tokens, in the base's tokenizer. */
  data: Pick<TrainingData, "train" | "val">;
  /** Tokens per training sequence (default: the base's block_size, which it may not exceed). */
  blockSize?: number;
  /** A previous run's adapter and state, to continue. */
  resume?: { adapter: LoraAdapterFile; state: LoraState };
}

/**
 * Fine-tunes adapters on a frozen base; create with {@link LoraTrainer.create}.
 *
 * @example
 * ```ts
 * const trainer = await LoraTrainer.create(gpu, config, { base, lora: LORA_DEFAULTS, data });
 * await runTraining(trainer); // writes out_dir/adapter_model.safetensors
 * ```
 */
export class LoraTrainer {
  /** The device. */
  readonly gpu: Gpu;
  /** The training settings. */
  readonly config: TrainConfig;
  /** The frozen base with the adapters attached. */
  readonly model: Llama;
  /** The adapters being trained. */
  readonly adapters: LoraAdapters;
  /** The data. */
  readonly data: Pick<TrainingData, "train" | "val">;
  /** Optimizer steps taken. */
  iteration = 0;
  /** Best validation loss seen. */
  bestValLoss: number = Infinity;
  /** Draws the training batches; its state is saved. */
  rng: Rng;

  #baseHash: string;
  #runner: StepRunner;

  private constructor(gpu: Gpu, config: TrainConfig, options: LoraTrainerOptions, baseHash: string) {
    this.gpu = gpu;
    this.config = config;
    this.data = options.data;
    this.#baseHash = baseHash;
    if (config.dtype !== "f32" && config.dtype !== "f16") {
      throw new ConfigError(`dtype must be "f32" or "f16", got "${config.dtype}"`);
    }
    // The base runs without its own dropout: only the adapters' inputs are dropped, as PEFT's lora_dropout.
    const modelConfig = { ...options.base.config, dropout: 0 };
    const T = options.blockSize ?? modelConfig.block_size;
    if (!Number.isInteger(T) || T < 1 || T > modelConfig.block_size) {
      throw new ConfigError(
        `block_size must be between 1 and the base's ${modelConfig.block_size}, got ${T}`,
      );
    }
    checkSplit(options.data.train, "train.bin", T, modelConfig.vocab_size);
    checkSplit(options.data.val, "val.bin", T, modelConfig.vocab_size);
    const lora = options.resume?.adapter.config ?? options.lora;
    const B = config.batch_size;
    this.adapters = new LoraAdapters(gpu, modelConfig, lora, { rows: B * T, training: true });
    // f16: the base's matmuls read an f16 copy of its weights; the adapters and their optimizer stay f32.
    this.model = new Llama(gpu, modelConfig, {
      batchSize: B,
      blockSize: T,
      training: true,
      lora: this.adapters,
      dtype: config.dtype,
    });
    this.#runner = new StepRunner(gpu, config, {
      model: this.model,
      params: this.adapters.params,
      grads: this.adapters.grads!,
      decay: this.adapters.layout.tensors.map((t) => ({ ...t, decay: true })),
    }, { label: "lora step", embeddingIndex: false, dropout: lora.dropout > 0 });
    this.rng = new Rng(config.seed);
  }

  /**
   * Builds a LoRA trainer: the base uploaded and frozen, the adapters at PEFT's
   * initial values from `config.seed` (B = 0: the model starts as the base), or
   * a previous run's adapter, moments and progress.
   *
   * @param gpu The device.
   * @param config Training settings (the model fields are ignored: the base's apply).
   * @param options The base, the adapter settings, the data, and what to resume.
   * @returns The trainer.
   * @example
   * ```ts
   * const trainer = await LoraTrainer.create(gpu, config, { base: await loadCheckpoint(path), lora: LORA_DEFAULTS, data });
   * await runTraining(trainer);
   * ```
   */
  static async create(gpu: Gpu, config: TrainConfig, options: LoraTrainerOptions): Promise<LoraTrainer> {
    const baseHash = await baseWeightsHash(options.base);
    const trainer = new LoraTrainer(gpu, config, options, baseHash);
    trainer.model.upload(options.base.params);
    const n = trainer.adapters.layout.total;
    const { resume } = options;
    if (resume) {
      if (resume.state.m.length !== n || resume.state.v.length !== n) {
        throw new ConfigError("The saved LoRA state does not match its adapter; start a fresh run");
      }
      trainer.adapters.upload(resume.adapter.values);
      gpu.write(trainer.#runner.m, resume.state.m);
      gpu.write(trainer.#runner.v, resume.state.v);
      trainer.iteration = resume.state.iteration;
      trainer.bestValLoss = resume.state.bestValLoss;
      trainer.rng = Rng.fromState(resume.state.rng);
      if (resume.state.lossScale) trainer.#runner.scaler?.reset(resume.state.lossScale);
    } else {
      trainer.adapters.upload(initialLoraParameters(trainer.adapters.layout, new Rng(config.seed)));
    }
    return trainer;
  }

  /**
   * The scheduled learning rate at an iteration.
   *
   * @param iteration The optimizer step (0-based).
   * @returns The learning rate.
   */
  learningRate(iteration: number): number {
    return learningRate(this.config, iteration);
  }

  /** Tokens consumed per optimizer step. */
  get tokensPerStep(): number {
    return this.config.batch_size * this.model.blockSize * this.config.gradient_accumulation_steps;
  }

  /**
   * One optimizer step over the adapters: every micro-batch's forward and
   * backward, the adapters' gradient norm and AdamW, in one submit.
   *
   * @param options `read`: wait for the step and return its loss.
   * @returns The loss, gradient norm and learning rate when read, else null.
   */
  step(options: { read?: boolean; timer?: GpuTimer } = {}): Promise<StepResult | null> {
    return this.#runner.step(this.iteration++, this.data.train, this.rng, options);
  }

  /**
   * Mean loss over `eval_iters` batches of each split (adapters on, no dropout),
   * drawn as the trainer draws them.
   *
   * @returns Mean train and val loss.
   */
  evaluate(): Promise<{ train: number; val: number }> {
    return this.#runner.evaluate(this.data, this.iteration);
  }
  /**
   * Tunes the kernels of a step on this device, as `Trainer.tuneKernels` does;
   * before the first step or evaluation.
   *
   * @param options Rounds and candidates.
   * @returns One row per product tuned.
   */
  tuneKernels(options?: TuneOptions): Promise<KernelTuning[]> {
    return this.#runner.tuneKernels(options);
  }

  /**
   * The adapter as it would be saved (read from the GPU).
   *
   * @returns Settings, base architecture and hash, values.
   */
  async adapter(): Promise<LoraAdapterFile> {
    return {
      config: this.adapters.config,
      base: { ...this.model.config },
      baseHash: this.#baseHash,
      values: await this.adapters.download(),
    };
  }

  /**
   * Writes `lora_state.safetensors`, `adapter_config.json` and `adapter_model.safetensors`
   * into out_dir (the safetensors atomically; the adapter last, so it never runs ahead of its state).
   *
   * @returns The adapter file.
   */
  async save(): Promise<string> {
    const dir = this.config.out_dir;
    await Deno.mkdir(dir, { recursive: true });
    await saveLoraState(join(dir, LORA_FILES.state), {
      ...await this.#runner.moments(),
      iteration: this.iteration,
      bestValLoss: this.bestValLoss,
      rng: this.rng.state(),
      trainConfig: { ...this.config },
      ...(this.#runner.scaler ? { lossScale: await this.#runner.scaler.read() } : {}),
    });
    const peft = JSON.stringify(peftAdapterConfig(this.adapters.config), null, 2);
    await Deno.writeTextFile(join(dir, LORA_FILES.config), peft + "\n");
    const path = join(dir, LORA_FILES.adapter);
    await saveLoraAdapter(path, await this.adapter());
    return path;
  }

  /** Frees the model, the adapters and every buffer the trainer owns. */
  release(): void {
    this.model.release();
    this.adapters.release();
    this.#runner.release();
  }
}
