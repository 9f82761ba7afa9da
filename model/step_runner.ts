/**
 * One optimizer step, shared by full training and LoRA: the micro-batches on
 * the GPU, every micro-batch's forward and backward, the gradient norm, the
 * non-finite watch, AdamW over the trainable flat buffer (and the f16 loss
 * scaler), all recorded into one command encoder and submitted once. The two
 * trainers differ only in what is trainable and what they save.
 *
 * @module
 */

import { AdamW, buildDecayMask, type DecayRange } from "../kernels/adamw.ts";
import type { Gpu } from "../kernels/device.ts";
import { DropoutSeed } from "../kernels/dropout.ts";
import { EmbeddingIndexBuffer } from "../kernels/embedding.ts";
import { LossScaler, type LossScalerOptions } from "../kernels/loss_scale.ts";
import { type KernelTuning, tuneKernels, type TuneOptions } from "../kernels/tune.ts";
import { NonFiniteWatch } from "../kernels/nonfinite.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { GradNorm } from "../kernels/reduce.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { GpuTimer } from "../kernels/timer.ts";
import { type HostBatch, randomBatch } from "./batches.ts";
import type { TokenArray } from "./meta.ts";
import type { Batch, Llama } from "./model.ts";
import { Rng } from "./rng.ts";
import { learningRate, type TrainConfig } from "./train_config.ts";
import type { StepResult } from "./trainer.ts";

/** What a step trains: the model that runs forward and backward, and the flat buffer AdamW updates. */
export interface Trainable {
  /** Records the forward and backward passes. */
  model: Llama;
  /** The parameters AdamW updates (all of the model's, or its adapters'). */
  params: Tensor;
  /** Their gradients, which the backward fills. */
  grads: Tensor;
  /** Which ranges of `params` get weight decay. */
  decay: DecayRange[];
  /** Records what must follow each update (the f16 copy of updated weights), if anything. */
  afterUpdate?: (rec: Recorder) => void;
}

/** How a {@link StepRunner} is set up. */
export interface StepRunnerOptions {
  /** Names the step's command buffer and buffers ("step", "lora step"). */
  label: string;
  /** The backward needs each batch's embedding bucket index (the embedding is trained). */
  embeddingIndex: boolean;
  /** Dropout is on (the model's or the adapters'): each step gets a fresh seed. */
  dropout: boolean;
  /** f16 only: the dynamic loss scale's settings. */
  scaling?: LossScalerOptions;
}

/** The GPU side of a trainer's steps; see the module doc. */
export class StepRunner {
  /** AdamW's first moments (the trainable buffer's length). */
  readonly m: Tensor;
  /** AdamW's second moments. */
  readonly v: Tensor;
  /** f16: the dynamic loss scaler; f32: null. */
  readonly scaler: LossScaler | null;
  #gpu: Gpu;
  #config: TrainConfig;
  #trainable: Trainable;
  #label: string;
  #decayMask: Tensor;
  #normSquared: Tensor;
  #lossSum: Tensor;
  #micro: Batch[];
  #adamw: AdamW;
  #gradNorm: GradNorm;
  #watch: NonFiniteWatch | null = null;
  #dropoutSeed: DropoutSeed | null;

  /**
   * Allocates the moments (zeroed), the decay mask, the micro-batches and the reductions.
   *
   * @param gpu The device.
   * @param config Batch size, accumulation, optimizer settings, dtype, seed.
   * @param trainable The model and the buffer to train.
   * @param options Labels, embedding index, dropout, loss scaling.
   */
  constructor(gpu: Gpu, config: TrainConfig, trainable: Trainable, options: StepRunnerOptions) {
    this.#gpu = gpu;
    this.#config = config;
    this.#trainable = trainable;
    this.#label = options.label;
    const n = trainable.params.length;
    const zeros = new Float32Array(n);
    this.m = gpu.tensor([n], "f32", { label: `${options.label} adam m`, data: zeros });
    this.v = gpu.tensor([n], "f32", { label: `${options.label} adam v`, data: zeros });
    this.#decayMask = gpu.tensor([Math.ceil(n / 32)], "u32", {
      label: `${options.label} decay mask`,
      data: buildDecayMask(n, trainable.decay),
    });
    this.#normSquared = gpu.tensor([1], "f32", { label: `${options.label} grad norm squared` });
    this.#lossSum = gpu.tensor([1], "f32", { label: "loss sum" });
    const B = config.batch_size;
    const T = trainable.model.blockSize;
    const V = trainable.model.config.vocab_size;
    this.#micro = Array.from({ length: config.gradient_accumulation_steps }, (_, i) => ({
      tokens: gpu.tensor([B, T], "u32", { label: `micro ${i} tokens` }),
      targets: gpu.tensor([B, T], "u32", { label: `micro ${i} targets` }),
      ...(options.embeddingIndex
        ? { index: new EmbeddingIndexBuffer(gpu, { n: B * T, vocabSize: V, label: `micro ${i} index` }) }
        : {}),
    }));
    this.#adamw = new AdamW(gpu, n);
    this.#gradNorm = new GradNorm(gpu, n);
    this.#dropoutSeed = options.dropout ? new DropoutSeed(gpu) : null;
    this.scaler = config.dtype === "f16" ? new LossScaler(gpu, options.scaling) : null;
  }

  /**
   * Records and submits one optimizer step on batches drawn from `train` with `rng`.
   *
   * @param iteration The step's iteration (0-based: the learning rate, AdamW's bias correction, dropout).
   * @param train The training tokens.
   * @param rng Draws the batches (advanced).
   * @param options `read`: wait and return the loss; `timer`: time every dispatch.
   * @returns The loss, gradient norm, learning rate and fault counts when read, else null.
   */
  async step(
    iteration: number,
    train: TokenArray,
    rng: Rng,
    options: { read?: boolean; timer?: GpuTimer } = {},
  ): Promise<StepResult | null> {
    const config = this.#config;
    const { model, params, grads, afterUpdate } = this.#trainable;
    const gpu = this.#gpu;
    const accumulation = config.gradient_accumulation_steps;
    const lr = learningRate(config, iteration);
    for (const micro of this.#micro) this.#upload(micro, randomBatch(train, this.#shape(), rng), true);
    this.#dropoutSeed?.set(config.seed, iteration);

    const rec = gpu.recorder({ label: `${this.#label} ${iteration}`, timer: options.timer });
    rec.clear(grads);
    // f32: the loss gradient carries 1/accumulation. f16: it carries the loss scale S
    // (on the GPU), and AdamW divides out S and 1/accumulation together.
    const scaler = this.scaler;
    this.#micro.forEach((batch, micro) => {
      const dropout = this.#dropoutSeed ? { seed: this.#dropoutSeed, micro } : undefined;
      model.forward(rec, { batch, loss: this.#lossSum, accumulateLoss: micro > 0, dropout });
      model.backward(rec, { batch, dropout, scale: scaler ? scaler.scale : 1 / accumulation });
    });
    this.#gradNorm.record(rec, { out: this.#normSquared, grads });
    this.#watch ??= new NonFiniteWatch(gpu, iteration);
    // f16 gradients may overflow: the loss scaler skips those steps and lowers the scale.
    this.#watch.record(rec, { loss: this.#lossSum, normSquared: scaler ? undefined : this.#normSquared });
    this.#adamw.record(rec, {
      params,
      grads,
      m: this.m,
      v: this.v,
      decayMask: this.#decayMask,
      normSquared: this.#normSquared,
      hyper: {
        lr,
        beta1: config.beta1,
        beta2: config.beta2,
        eps: 1e-8,
        weightDecay: config.weight_decay,
        maxGradNorm: config.grad_clip,
        step: iteration + 1,
        gradScale: scaler ? 1 / accumulation : 1,
      },
      lossScale: scaler?.scale,
    });
    scaler?.record(rec, { normSquared: this.#normSquared });
    afterUpdate?.(rec);
    rec.submit();
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
   * Tunes the matmuls and attention of a micro-batch's forward and backward on
   * this device (see `kernels/tune.ts`); results are bit-identical either way.
   * Call it before the first step: timing writes the activations and gradients.
   *
   * @param options Rounds and candidates.
   * @returns One row per call tuned.
   */
  tuneKernels(options?: TuneOptions): Promise<KernelTuning[]> {
    const { model } = this.#trainable;
    const batch = this.#micro[0];
    const dropout = this.#dropoutSeed ? { seed: this.#dropoutSeed, micro: 0 } : undefined;
    return tuneKernels(this.#gpu, (rec) => {
      model.forward(rec, { batch, loss: this.#lossSum, dropout });
      model.backward(rec, { batch, dropout, scale: 1 });
    }, options);
  }

  /**
   * nanoGPT's estimate_loss: the mean loss over `eval_iters` random batches of
   * each split, without dropout, drawn from a generator seeded by the seed and
   * the iteration, so an evaluation is the same whether or not a run was resumed.
   *
   * @param data The two splits.
   * @param iteration The iteration evaluated at.
   * @returns Mean train and val loss.
   */
  async evaluate(
    data: { train: TokenArray; val: TokenArray },
    iteration: number,
  ): Promise<{ train: number; val: number }> {
    const { eval_iters: count, seed } = this.#config;
    const micro = this.#micro[0];
    const result = { train: 0, val: 0 };
    for (const split of ["train", "val"] as const) {
      const rng = new Rng(seed * 1000003 + iteration * 2 + (split === "val" ? 1 : 0));
      for (let i = 0; i < count; i++) {
        this.#upload(micro, randomBatch(data[split], this.#shape(), rng), false);
        const rec = this.#gpu.recorder({ label: `${this.#label} eval` });
        this.#trainable.model.forward(rec, { batch: micro, loss: this.#lossSum, accumulateLoss: i > 0 });
        rec.submit();
      }
      result[split] = (await this.#gpu.readFloats(this.#lossSum))[0] / count;
    }
    return result;
  }

  /**
   * Reads the AdamW moments back, for a checkpoint.
   *
   * @returns m and v.
   */
  async moments(): Promise<{ m: Float32Array; v: Float32Array }> {
    return { m: await this.#gpu.readFloats(this.m), v: await this.#gpu.readFloats(this.v) };
  }

  /** Frees every buffer the runner owns (not the model's or the trainable buffer). */
  release(): void {
    for (const t of [this.m, this.v, this.#decayMask, this.#normSquared, this.#lossSum]) this.#gpu.release(t);
    for (const micro of this.#micro) {
      this.#gpu.release(micro.tokens);
      this.#gpu.release(micro.targets);
      micro.index?.release();
    }
    this.#adamw.release();
    this.#gradNorm.release();
    if (this.#dropoutSeed) this.#gpu.release(this.#dropoutSeed.tensor);
    this.scaler?.release();
    this.#watch?.release();
  }

  #shape(): { batchSize: number; blockSize: number } {
    return { batchSize: this.#config.batch_size, blockSize: this.#trainable.model.blockSize };
  }

  /** Writes a host batch into a micro-batch; the embedding index only for a training step's backward. */
  #upload(micro: Batch, batch: HostBatch, forBackward: boolean): void {
    this.#gpu.write(micro.tokens, batch.tokens);
    this.#gpu.write(micro.targets, batch.targets);
    if (forBackward) micro.index?.update(batch.tokens);
  }
}
