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
import { AdamW, buildDecayMask } from "../kernels/adamw.ts";
import type { Gpu } from "../kernels/device.ts";
import { DropoutSeed } from "../kernels/dropout.ts";
import { NonFiniteWatch } from "../kernels/nonfinite.ts";
import { LossScaler } from "../kernels/loss_scale.ts";
import { GradNorm } from "../kernels/reduce.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { checkSplit, type HostBatch, randomBatch } from "./batches.ts";
import { ConfigError, type ModelConfig } from "./config.ts";
import { initialLoraParameters, type LoraConfig } from "./lora.ts";
import { LoraAdapters } from "./lora_adapters.ts";
import { baseWeightsHash, type LoraAdapterFile, peftAdapterConfig, saveLoraAdapter } from "./lora_file.ts";
import { type LoraState, saveLoraState } from "./lora_state.ts";
import { type Batch, Llama } from "./model.ts";
import { Rng } from "./rng.ts";
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
  data: TrainingData;
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
  readonly data: TrainingData;
  /** Optimizer steps taken. */
  iteration = 0;
  /** Best validation loss seen. */
  bestValLoss: number = Infinity;
  /** Draws the training batches; its state is saved. */
  rng: Rng;

  #baseHash: string;
  #m: Tensor;
  #v: Tensor;
  #decayMask: Tensor;
  #normSquared: Tensor;
  #lossSum: Tensor;
  #micro: Batch[];
  #adamw: AdamW;
  #gradNorm: GradNorm;
  #watch: NonFiniteWatch | null = null;
  #dropoutSeed: DropoutSeed | null;
  #scaler: LossScaler | null;

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
    checkSplit(options.data.train, "train.bin", modelConfig.block_size, modelConfig.vocab_size);
    checkSplit(options.data.val, "val.bin", modelConfig.block_size, modelConfig.vocab_size);
    const lora = options.resume?.adapter.config ?? options.lora;
    const B = config.batch_size;
    const T = modelConfig.block_size;
    this.adapters = new LoraAdapters(gpu, modelConfig, lora, { rows: B * T, training: true });
    // f16: the base's matmuls read an f16 copy of its weights; the adapters and their optimizer stay f32.
    this.model = new Llama(gpu, modelConfig, {
      batchSize: B,
      training: true,
      lora: this.adapters,
      dtype: config.dtype,
    });
    const n = this.adapters.layout.total;
    this.#m = gpu.tensor([n], "f32", { label: "lora adam m" });
    this.#v = gpu.tensor([n], "f32", { label: "lora adam v" });
    this.#decayMask = gpu.tensor([Math.ceil(n / 32)], "u32", {
      label: "lora decay mask",
      data: buildDecayMask(n, this.adapters.layout.tensors.map((t) => ({ ...t, decay: true }))),
    });
    this.#normSquared = gpu.tensor([1], "f32", { label: "lora grad norm squared" });
    this.#lossSum = gpu.tensor([1], "f32", { label: "loss sum" });
    this.#micro = Array.from({ length: config.gradient_accumulation_steps }, (_, i) => ({
      tokens: gpu.tensor([B, T], "u32", { label: `micro ${i} tokens` }),
      targets: gpu.tensor([B, T], "u32", { label: `micro ${i} targets` }),
    }));
    this.#adamw = new AdamW(gpu, n);
    this.#gradNorm = new GradNorm(gpu, n);
    this.#dropoutSeed = lora.dropout > 0 ? new DropoutSeed(gpu) : null;
    this.#scaler = config.dtype === "f16" ? new LossScaler(gpu) : null;
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
      gpu.write(trainer.#m, resume.state.m);
      gpu.write(trainer.#v, resume.state.v);
      trainer.iteration = resume.state.iteration;
      trainer.bestValLoss = resume.state.bestValLoss;
      trainer.rng = Rng.fromState(resume.state.rng);
      if (resume.state.lossScale) trainer.#scaler?.reset(resume.state.lossScale);
    } else {
      trainer.adapters.upload(initialLoraParameters(trainer.adapters.layout, new Rng(config.seed)));
      const zeros = new Float32Array(n);
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
   * One optimizer step over the adapters: every micro-batch's forward and
   * backward, the adapters' gradient norm and AdamW, in one submit.
   *
   * @param options `read`: wait for the step and return its loss.
   * @returns The loss, gradient norm and learning rate when read, else null.
   */
  async step(options: { read?: boolean } = {}): Promise<StepResult | null> {
    const { config, model, gpu, adapters } = this;
    const accumulation = config.gradient_accumulation_steps;
    const lr = this.learningRate(this.iteration);
    for (const micro of this.#micro) {
      this.#upload(micro, randomBatch(this.data.train, this.#shape(), this.rng));
    }
    this.#dropoutSeed?.set(config.seed, this.iteration);

    const rec = gpu.recorder({ label: `lora step ${this.iteration}` });
    rec.clear(adapters.grads!);
    // As the trainer: f16 gradients carry the loss scale S, which AdamW divides out with 1/accumulation.
    const scaler = this.#scaler;
    this.#micro.forEach((batch, micro) => {
      const dropout = this.#dropoutSeed ? { seed: this.#dropoutSeed, micro } : undefined;
      model.forward(rec, { batch, loss: this.#lossSum, accumulateLoss: micro > 0, dropout });
      model.backward(rec, { batch, dropout, scale: scaler ? scaler.scale : 1 / accumulation });
    });
    this.#gradNorm.record(rec, { out: this.#normSquared, grads: adapters.grads! });
    this.#watch ??= new NonFiniteWatch(gpu, this.iteration);
    this.#watch.record(rec, { loss: this.#lossSum, normSquared: scaler ? undefined : this.#normSquared });
    this.#adamw.record(rec, {
      params: adapters.params,
      grads: adapters.grads!,
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
   * Mean loss over `eval_iters` batches of each split (adapters on, no dropout),
   * drawn from a generator seeded by the seed and iteration, as the trainer does.
   *
   * @returns Mean train and val loss.
   */
  async evaluate(): Promise<{ train: number; val: number }> {
    const result = { train: 0, val: 0 };
    const micro = this.#micro[0];
    for (const split of ["train", "val"] as const) {
      const rng = new Rng(this.config.seed * 1000003 + this.iteration * 2 + (split === "val" ? 1 : 0));
      for (let i = 0; i < this.config.eval_iters; i++) {
        this.#upload(micro, randomBatch(this.data[split], this.#shape(), rng));
        const rec = this.gpu.recorder({ label: "lora eval" });
        this.model.forward(rec, { batch: micro, loss: this.#lossSum, accumulateLoss: i > 0 });
        rec.submit();
      }
      result[split] = (await this.gpu.readFloats(this.#lossSum))[0] / this.config.eval_iters;
    }
    return result;
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
      m: await this.gpu.readFloats(this.#m),
      v: await this.gpu.readFloats(this.#v),
      iteration: this.iteration,
      bestValLoss: this.bestValLoss,
      rng: this.rng.state(),
      trainConfig: { ...this.config },
      ...(this.#scaler ? { lossScale: await this.#scaler.read() } : {}),
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
    for (const t of [this.#m, this.#v, this.#decayMask, this.#normSquared, this.#lossSum]) {
      this.gpu.release(t);
    }
    for (const micro of this.#micro) {
      this.gpu.release(micro.tokens);
      this.gpu.release(micro.targets);
    }
    this.#adamw.release();
    this.#gradNorm.release();
    if (this.#dropoutSeed) this.gpu.release(this.#dropoutSeed.tensor);
    this.#watch?.release();
    this.#scaler?.release();
  }

  #shape(): { batchSize: number; blockSize: number } {
    return { batchSize: this.config.batch_size, blockSize: this.model.config.block_size };
  }

  #upload(micro: Batch, batch: HostBatch): void {
    this.gpu.write(micro.tokens, batch.tokens);
    this.gpu.write(micro.targets, batch.targets);
  }
}
