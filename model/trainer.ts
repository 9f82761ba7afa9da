/**
 * nanoGPT's training loop on the GPU model: random batches, gradient
 * accumulation, AdamW with warmup and cosine decay, global-norm clipping, and
 * evaluation. A whole optimizer step — every micro-batch's forward and backward,
 * the gradient norm and the update — is recorded into one command encoder and
 * submitted once; the loss stays on the GPU until a caller asks for it.
 *
 * @module
 */

import { join } from "node:path";
import { IGNORE_INDEX } from "../kernels/cross_entropy.ts";
import type { Gpu } from "../kernels/device.ts";
import type { LossScalerOptions } from "../kernels/loss_scale.ts";
import type { KernelTuning, TuneOptions } from "../kernels/tune.ts";
import type { NonFiniteReport } from "../kernels/nonfinite.ts";
import type { GpuTimer } from "../kernels/timer.ts";
import { checkSplit } from "./batches.ts";
import { type Checkpoint, saveCheckpoint } from "./checkpoint.ts";
import { ConfigError, type ModelConfig } from "./config.ts";
import type { DatasetMeta, TokenArray } from "./meta.ts";
import { Llama } from "./model.ts";
import { initialParameters } from "./params.ts";
import { Rng } from "./rng.ts";
import { StepRunner } from "./step_runner.ts";
import { learningRate, type TrainConfig } from "./train_config.ts";

/**
 * The tokens a trainer reads: both splits and the meta.json that says how they
 * were made. {@link loadDataset} reads one from a prepared folder.
 *
 * @example
 * ```ts
 * const meta = await readMeta("data/shakespeare_char");
 * const data: TrainingData = {
 *   train: await readTokens("data/shakespeare_char", "train", meta),
 *   val: await readTokens("data/shakespeare_char", "val", meta),
 *   meta,
 * };
 * ```
 */
export interface TrainingData {
  /** train.bin. */
  train: TokenArray;
  /** val.bin. */
  val: TokenArray;
  /** meta.json (stored in checkpoints as the tokenizer). */
  meta: DatasetMeta;
}

/**
 * What a step reports when its loss is read back (`trainer.step({ read: true })`).
 *
 * @example
 * ```ts
 * const result: StepResult | null = await trainer.step({ read: true });
 * if (result) console.log(`loss ${result.loss.toFixed(4)}, grad norm ${result.gradNorm.toFixed(2)}`);
 * ```
 */
export interface StepResult {
  /** Mean training loss over the step's micro-batches. */
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Learning rate used. */
  lr: number;
  /** f16 only: the loss scale the step used, and the steps skipped for overflow so far. */
  lossScale?: { scale: number; skipped: number };
  /**
   * Steps of this run whose loss (or, in f32, gradient) was NaN or infinite, and the first one's iteration.
   * AdamW leaves the weights untouched on such a step.
   */
  nonFinite: NonFiniteReport;
}

/**
 * Trains one model: owns the model, the optimizer state and the batch generator,
 * takes optimizer steps and evaluates. Create with {@link Trainer.create}; drive
 * with {@link runTraining}, or step it yourself.
 *
 * @example
 * ```ts
 * const config = trainConfig({ max_iters: 200 });
 * const data = await loadDataset("data/shakespeare_char");
 * const trainer = Trainer.create(gpu, config, modelConfigFor(config, data.meta.vocab_size), data);
 * await runTraining(trainer, { onLog: (m) => console.log(m.iteration, m.loss) });
 * trainer.release();
 * ```
 */
export class Trainer {
  /** The device. */
  readonly gpu: Gpu;
  /** The training settings. */
  readonly config: TrainConfig;
  /** The model being trained. */
  readonly model: Llama;
  /** The data. */
  readonly data: TrainingData;
  /** Optimizer steps taken. */
  iteration = 0;
  /** Best validation loss seen. */
  bestValLoss: number = Infinity;
  /** Draws the training batches; its state is checkpointed. */
  rng: Rng;

  #runner: StepRunner;

  private constructor(
    gpu: Gpu,
    config: TrainConfig,
    modelConfig: ModelConfig,
    data: TrainingData,
    scaling: LossScalerOptions,
  ) {
    this.gpu = gpu;
    this.config = config;
    this.data = data;
    checkSplit(data.train, "train.bin", modelConfig.block_size, modelConfig.vocab_size);
    checkSplit(data.val, "val.bin", modelConfig.block_size, modelConfig.vocab_size);
    if (config.dtype !== "f32" && config.dtype !== "f16") {
      throw new ConfigError(`dtype must be "f32" or "f16", got "${config.dtype}"`);
    }
    this.model = new Llama(gpu, modelConfig, {
      batchSize: config.batch_size,
      training: true,
      dtype: config.dtype,
    });
    const { layout } = this.model;
    this.#runner = new StepRunner(gpu, config, {
      model: this.model,
      params: this.model.params,
      grads: this.model.grads!,
      decay: layout.tensors.map((t) => ({ offset: t.offset, length: t.length, decay: t.decay })),
      afterUpdate: (rec) => this.model.syncWeights(rec),
    }, { label: "step", embeddingIndex: true, dropout: modelConfig.dropout > 0, scaling });
    this.rng = new Rng(config.seed);
  }

  /**
   * Builds a trainer: a fresh model initialised from `config.seed`, or the
   * weights, moments and progress of a checkpoint.
   *
   * @param gpu The device.
   * @param config Training settings.
   * @param modelConfig The architecture (must equal the checkpoint's when resuming).
   * @param data Training and validation tokens.
   * @param resume A checkpoint to continue from.
   * @param scaling f16 only: the dynamic loss scale's settings (PyTorch's GradScaler defaults).
   * @returns The trainer.
   * @example
   * ```ts
   * const trainer = Trainer.create(gpu, config, modelConfig, { train, val, meta });
   * for (let i = 0; i < 100; i++) await trainer.step();
   * console.log(await trainer.evaluate());
   * ```
   */
  static create(
    gpu: Gpu,
    config: TrainConfig,
    modelConfig: ModelConfig,
    data: TrainingData,
    resume?: Checkpoint,
    scaling: LossScalerOptions = {},
  ): Trainer {
    const trainer = new Trainer(gpu, config, modelConfig, data, scaling);
    if (resume) {
      trainer.model.upload(resume.params);
      if (resume.moments) {
        gpu.write(trainer.#runner.m, resume.moments.m);
        gpu.write(trainer.#runner.v, resume.moments.v);
      }
      if (resume.training) {
        trainer.iteration = resume.training.iteration;
        trainer.bestValLoss = resume.training.bestValLoss;
        trainer.rng = Rng.fromState(resume.training.rng);
        if (resume.training.lossScale) trainer.#runner.scaler?.reset(resume.training.lossScale);
      }
    } else {
      trainer.model.upload(initialParameters(trainer.model.layout, modelConfig, new Rng(config.seed)));
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
    return this.config.batch_size * this.model.config.block_size * this.config.gradient_accumulation_steps;
  }

  /**
   * Takes one optimizer step: one submit holding every micro-batch's forward and
   * backward, the gradient norm and the AdamW update.
   *
   * @param options `read`: wait for the step and return its loss (costs a GPU round trip); `timer`: time
   * each dispatch (for profiles; each dispatch then gets its own compute pass).
   * @returns The loss, gradient norm and learning rate when read, else null.
   */
  step(options: { read?: boolean; timer?: GpuTimer } = {}): Promise<StepResult | null> {
    return this.#runner.step(this.iteration++, this.data.train, this.rng, options);
  }

  /**
   * Times the blockings of every matmul and the plans of the attention a
   * training step makes on this device, and keeps the fastest (see
   * `kernels/tune.ts`). Tuning changes speed, never results: every candidate
   * gives the same bits. Call it before the first step or evaluation (timing
   * overwrites activations and gradients).
   *
   * @param options Rounds and candidates.
   * @returns One row per call tuned.
   * @example
   * ```ts
   * const tuned = await trainer.tuneKernels();
   * for (const t of tuned) console.log(t.call, t.choice, `${(t.defaultMs / t.ms).toFixed(2)}x`);
   * ```
   */
  tuneKernels(options?: TuneOptions): Promise<KernelTuning[]> {
    return this.#runner.tuneKernels(options);
  }

  /**
   * nanoGPT's estimate_loss: the mean loss over `eval_iters` random batches of
   * each split, without dropout. The batches are drawn from a generator seeded
   * by the seed and the iteration, so an evaluation is the same whether or not
   * the run was resumed.
   *
   * @returns Mean train and val loss.
   */
  evaluate(): Promise<{ train: number; val: number }> {
    return this.#runner.evaluate(this.data, this.iteration);
  }

  /**
   * Everything needed to resume: parameters, moments and progress (read from the GPU).
   *
   * @returns The checkpoint.
   */
  async checkpoint(): Promise<Checkpoint> {
    return {
      config: this.model.config,
      tokenizer: this.data.meta,
      params: await this.model.download(),
      moments: await this.#runner.moments(),
      training: {
        iteration: this.iteration,
        bestValLoss: this.bestValLoss,
        rng: this.rng.state(),
        trainConfig: { ...this.config },
        ...(this.#runner.scaler ? { lossScale: await this.#runner.scaler.read() } : {}),
      },
    };
  }

  /**
   * Writes {@link Trainer.checkpoint} to `<out_dir>/ckpt.safetensors` (atomically).
   *
   * @returns The file written.
   */
  async save(): Promise<string> {
    const path = join(this.config.out_dir, "ckpt.safetensors");
    await Deno.mkdir(this.config.out_dir, { recursive: true });
    await saveCheckpoint(path, await this.checkpoint());
    return path;
  }

  /** Frees the model and every buffer the trainer owns. */
  release(): void {
    this.model.release();
    this.#runner.release();
  }
}

export { IGNORE_INDEX };
