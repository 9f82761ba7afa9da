/**
 * nanoGPT's training loop on the GPU model: random batches, gradient
 * accumulation, AdamW with warmup and cosine decay, global-norm clipping, and
 * evaluation. A whole optimizer step — every micro-batch's forward and backward,
 * the gradient norm and the update — is recorded into one command encoder and
 * submitted once; the loss stays on the GPU until a caller asks for it.
 *
 * @module
 */

import { AdamW, buildDecayMask } from "../kernels/adamw.ts";
import { IGNORE_INDEX } from "../kernels/cross_entropy.ts";
import type { Gpu } from "../kernels/device.ts";
import { DropoutSeed } from "../kernels/dropout.ts";
import { EmbeddingIndexBuffer } from "../kernels/embedding.ts";
import { LossScaler, type LossScalerOptions } from "../kernels/loss_scale.ts";
import { type NonFiniteReport, NonFiniteWatch } from "../kernels/nonfinite.ts";
import { GradNorm } from "../kernels/reduce.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { GpuTimer } from "../kernels/timer.ts";
import { checkSplit, type HostBatch, randomBatch } from "./batches.ts";
import { join } from "node:path";
import { type Checkpoint, saveCheckpoint } from "./checkpoint.ts";
import { ConfigError, type ModelConfig } from "./config.ts";
import type { DatasetMeta, TokenArray } from "./meta.ts";
import { type Batch, Llama } from "./model.ts";
import { initialParameters } from "./params.ts";
import { Rng } from "./rng.ts";
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

  #m: Tensor;
  #v: Tensor;
  #decayMask: Tensor;
  #normSquared: Tensor;
  #lossSum: Tensor;
  #micro: Batch[];
  #adamw: AdamW;
  #gradNorm: GradNorm;
  #dropoutSeed: DropoutSeed | null;
  #scaler: LossScaler | null;
  #watch: NonFiniteWatch | null = null;

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
    const n = layout.total;
    this.#m = gpu.tensor([n], "f32", { label: "adam m" });
    this.#v = gpu.tensor([n], "f32", { label: "adam v" });
    this.#decayMask = gpu.tensor([Math.ceil(n / 32)], "u32", {
      label: "decay mask",
      data: buildDecayMask(
        n,
        layout.tensors.map((t) => ({ offset: t.offset, length: t.length, decay: t.decay })),
      ),
    });
    this.#normSquared = gpu.tensor([1], "f32", { label: "grad norm squared" });
    this.#lossSum = gpu.tensor([1], "f32", { label: "loss sum" });
    const B = config.batch_size;
    const T = modelConfig.block_size;
    this.#micro = Array.from({ length: config.gradient_accumulation_steps }, (_, i) => ({
      tokens: gpu.tensor([B, T], "u32", { label: `micro ${i} tokens` }),
      targets: gpu.tensor([B, T], "u32", { label: `micro ${i} targets` }),
      index: new EmbeddingIndexBuffer(gpu, {
        n: B * T,
        vocabSize: modelConfig.vocab_size,
        label: `micro ${i} index`,
      }),
    }));
    this.#adamw = new AdamW(gpu, n);
    this.#gradNorm = new GradNorm(gpu, n);
    this.#dropoutSeed = modelConfig.dropout > 0 ? new DropoutSeed(gpu) : null;
    this.#scaler = config.dtype === "f16" ? new LossScaler(gpu, scaling) : null;
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
        gpu.write(trainer.#m, resume.moments.m);
        gpu.write(trainer.#v, resume.moments.v);
      }
      if (resume.training) {
        trainer.iteration = resume.training.iteration;
        trainer.bestValLoss = resume.training.bestValLoss;
        trainer.rng = Rng.fromState(resume.training.rng);
        if (resume.training.lossScale) trainer.#scaler?.reset(resume.training.lossScale);
      }
    } else {
      trainer.model.upload(initialParameters(trainer.model.layout, modelConfig, new Rng(config.seed)));
      const zeros = new Float32Array(trainer.model.layout.total);
      gpu.write(trainer.#m, zeros);
      gpu.write(trainer.#v, zeros);
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
  async step(options: { read?: boolean; timer?: GpuTimer } = {}): Promise<StepResult | null> {
    const { config, model, gpu } = this;
    const accumulation = config.gradient_accumulation_steps;
    const lr = learningRate(config, this.iteration);
    for (const micro of this.#micro) {
      this.#upload(micro, randomBatch(this.data.train, this.#shape(), this.rng));
    }
    this.#dropoutSeed?.set(config.seed, this.iteration);

    const rec = gpu.recorder({ label: `step ${this.iteration}`, timer: options.timer });
    rec.clear(model.grads!);
    // f32: the loss gradient carries 1/accumulation. f16: it carries the loss scale S
    // (on the GPU), and AdamW divides out S and 1/accumulation together.
    const scaler = this.#scaler;
    this.#micro.forEach((batch, micro) => {
      const dropout = this.#dropoutSeed ? { seed: this.#dropoutSeed, micro } : undefined;
      model.forward(rec, { batch, loss: this.#lossSum, accumulateLoss: micro > 0, dropout });
      model.backward(rec, { batch, dropout, scale: scaler ? scaler.scale : 1 / accumulation });
    });
    this.#gradNorm.record(rec, { out: this.#normSquared, grads: model.grads! });
    this.#watch ??= new NonFiniteWatch(gpu, this.iteration);
    // f16 gradients may overflow: the loss scaler skips those steps and lowers the scale.
    this.#watch.record(rec, { loss: this.#lossSum, normSquared: scaler ? undefined : this.#normSquared });
    this.#adamw.record(rec, {
      params: model.params,
      grads: model.grads!,
      m: this.#m,
      v: this.#v,
      decayMask: this.#decayMask,
      normSquared: this.#normSquared,
      hyper: {
        lr,
        beta1: config.beta1,
        beta2: config.beta2,
        eps: 1e-8,
        weightDecay: config.weight_decay,
        maxGradNorm: config.grad_clip,
        step: this.iteration + 1,
        gradScale: scaler ? 1 / accumulation : 1,
      },
      lossScale: scaler?.scale,
    });
    scaler?.record(rec, { normSquared: this.#normSquared });
    model.syncWeights(rec);
    rec.submit();
    this.iteration++;
    if (!options.read) return null;
    const lossSum = (await gpu.readFloats(this.#lossSum))[0];
    const normSquared = (await gpu.readFloats(this.#normSquared))[0];
    const nonFinite = await this.#watch.read();
    if (!scaler) return { loss: lossSum / accumulation, gradNorm: Math.sqrt(normSquared), lr, nonFinite };
    const state = await scaler.read();
    return {
      loss: lossSum / accumulation,
      gradNorm: Math.sqrt(normSquared) / (state.lastScale * accumulation),
      lr,
      lossScale: { scale: state.lastScale, skipped: state.skipped },
      nonFinite,
    };
  }

  /**
   * nanoGPT's estimate_loss: the mean loss over `eval_iters` random batches of
   * each split, without dropout. The batches are drawn from a generator seeded
   * by the seed and the iteration, so an evaluation is the same whether or not
   * the run was resumed.
   *
   * @returns Mean train and val loss.
   */
  async evaluate(): Promise<{ train: number; val: number }> {
    const result = { train: 0, val: 0 };
    for (const split of ["train", "val"] as const) {
      const rng = new Rng(this.config.seed * 1000003 + this.iteration * 2 + (split === "val" ? 1 : 0));
      for (let i = 0; i < this.config.eval_iters; i++) {
        await this.forwardLoss(randomBatch(this.data[split], this.#shape(), rng), i > 0);
      }
      result[split] = (await this.gpu.readFloats(this.#lossSum))[0] / this.config.eval_iters;
    }
    return result;
  }

  /**
   * Runs the forward of one host batch (no dropout) and adds its mean loss into
   * the loss sum, or overwrites it; submits at once.
   *
   * @param batch Tokens and targets (batch_size × block_size; IGNORE targets allowed).
   * @param accumulate Add to the running sum instead of starting a new one.
   * @returns Resolves once the work is submitted; read the sum with {@link Trainer.lossSum}.
   */
  async forwardLoss(batch: HostBatch, accumulate: boolean): Promise<void> {
    const micro = this.#micro[0];
    this.#upload(micro, batch, false);
    const rec = this.gpu.recorder({ label: "eval" });
    this.model.forward(rec, { batch: micro, loss: this.#lossSum, accumulateLoss: accumulate });
    rec.submit();
    await Promise.resolve();
  }

  /**
   * Reads the loss sum of the last {@link Trainer.forwardLoss} calls.
   *
   * @returns The sum of their mean losses.
   */
  async lossSum(): Promise<number> {
    return (await this.gpu.readFloats(this.#lossSum))[0];
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
      moments: { m: await this.gpu.readFloats(this.#m), v: await this.gpu.readFloats(this.#v) },
      training: {
        iteration: this.iteration,
        bestValLoss: this.bestValLoss,
        rng: this.rng.state(),
        trainConfig: { ...this.config },
        ...(this.#scaler ? { lossScale: await this.#scaler.read() } : {}),
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
    for (const t of [this.#m, this.#v, this.#decayMask, this.#normSquared, this.#lossSum]) {
      this.gpu.release(t);
    }
    for (const micro of this.#micro) {
      this.gpu.release(micro.tokens);
      this.gpu.release(micro.targets);
      micro.index!.release();
    }
    this.#adamw.release();
    this.#gradNorm.release();
    if (this.#dropoutSeed) this.gpu.release(this.#dropoutSeed.tensor);
    this.#scaler?.release();
    this.#watch?.release();
  }

  #shape(): { batchSize: number; blockSize: number } {
    return { batchSize: this.config.batch_size, blockSize: this.model.config.block_size };
  }

  #upload(micro: Batch, batch: HostBatch, withIndex = true): void {
    this.gpu.write(micro.tokens, batch.tokens);
    this.gpu.write(micro.targets, batch.targets);
    if (withIndex) micro.index!.update(batch.tokens);
  }
}

export { IGNORE_INDEX };
