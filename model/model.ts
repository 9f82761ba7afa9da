/**
 * The LLaMA model on the GPU: parameters and gradients in flat buffers laid out
 * by the parameter table, and a forward and a hand-written backward recorded
 * into a {@link Recorder}, layer by layer, from the activations saved in forward.
 *
 * Forward, per layer: x += o_proj(attention(rope(qkv_proj(norm1(x))))), then
 * x += down_proj(swiglu(gate_up_proj(norm2(x)))); then a final norm and lm_head.
 * Each residual add is fused with the norm that follows it. Backward walks the
 * same ops in reverse; parameter gradients are added into the flat gradient
 * buffer (so micro-batches accumulate and tied embeddings sum both uses).
 *
 * @module
 */

import type { Gpu } from "../kernels/device.ts";
import { attentionForward } from "../kernels/attention.ts";
import { crossEntropyForward, lossMean } from "../kernels/cross_entropy.ts";
import { dropout, type DropoutSeed } from "../kernels/dropout.ts";
import { embeddingForward, type EmbeddingIndexBuffer } from "../kernels/embedding.ts";
import { cast } from "../kernels/elementwise.ts";
import { GpuError } from "../kernels/errors.ts";
import { cachedAttention } from "../kernels/cached_attention.ts";
import { kvCacheWrite } from "../kernels/kv_cache.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { residualRmsnormForward, rmsnormForward } from "../kernels/rmsnorm.ts";
import { ropeForward } from "../kernels/rope.ts";
import { decodeLayer, decodeLayerFits } from "../kernels/decode_layer.ts";
import { swigluForward } from "../kernels/swiglu.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { type Activations, allocateActivations, releaseActivations } from "./activations.ts";
import { recordBackward } from "./backward.ts";
import { ConfigError, headSize, type ModelConfig } from "./config.ts";
import { linear } from "./linear.ts";
import type { LoraAdapters } from "./lora_adapters.ts";
import { initialParameters, type ParamLayout, paramLayout } from "./params.ts";
import { Rng } from "./rng.ts";
import { FlatViews } from "./weights.ts";

/**
 * One micro-batch on the GPU: what {@link Llama.forward} and {@link Llama.backward} read.
 *
 * @example
 * ```ts
 * const tokens = gpu.tensor([1, 4], "u32", { data: [20, 43, 50, 50] });
 * const targets = gpu.tensor([1, 4], "u32", { data: [43, 50, 50, 53] });
 * model.forward(rec, { batch: { tokens, targets }, loss });
 * ```
 */
export interface Batch {
  /** Input token ids, u32 (B, T). */
  tokens: Tensor;
  /** Next-token targets, u32 (B, T). */
  targets: Tensor;
  /** The embedding-backward index of `tokens` (training only). */
  index?: EmbeddingIndexBuffer;
}

/**
 * Keys and values of every layer for incremental decoding, and the position of
 * the next token. {@link Generator} allocates and drives one; build your own only
 * to call {@link Llama.forwardHidden} directly.
 *
 * @example
 * ```ts
 * const width = config.n_kv_head * (config.n_embd / config.n_head);
 * const layers = Array.from({ length: config.n_layer }, () => [1, config.block_size, width]);
 * const cache: KvCache = {
 *   k: layers.map((shape) => gpu.tensor(shape)),
 *   v: layers.map((shape) => gpu.tensor(shape)),
 *   position: gpu.tensor([1], "u32", { data: [0] }),
 * };
 * ```
 */
export interface KvCache {
  /** Keys per layer (B, Tmax, NKV·HS). */
  k: Tensor[];
  /** Values per layer (B, Tmax, NKV·HS). */
  v: Tensor[];
  /** u32 [1]: where a decode step's token goes (its RoPE position and cache slot). */
  position: Tensor;
}

/**
 * Dropout for one micro-step: the step's seed and a stream number no other
 * micro-step uses, so forward and backward draw the same masks.
 *
 * @example
 * ```ts
 * const dropout: DropoutStep = { seed, micro: 0 }; // seed: a DropoutSeed set once per step
 * model.forward(rec, { batch, loss, dropout });
 * model.backward(rec, { batch, dropout, scale: 1 });
 * ```
 */
export interface DropoutStep {
  /** The per-step seed buffer. */
  seed: DropoutSeed;
  /** Micro-step number within the step. */
  micro: number;
}

/**
 * How a {@link Llama} is allocated: its batch shape, whether it trains, and its precision.
 *
 * @example
 * ```ts
 * const options: LlamaOptions = { batchSize: 4, blockSize: 32, dtype: gpu.features.f16 ? "f16" : "f32" };
 * const model = Llama.fromCheckpoint(gpu, await loadCheckpoint("out/ckpt.safetensors"), options);
 * ```
 */
export interface LlamaOptions {
  /** Sequences per forward. */
  batchSize: number;
  /** Tokens per sequence (default: the config's block_size). */
  blockSize?: number;
  /** Allocate gradients and what the backward pass needs (default: no). */
  training?: boolean;
  /** Precision of the matmuls and attention (default f32; f16 needs shader-f16). */
  dtype?: "f32" | "f16";
}

/**
 * A LLaMA model bound to a device and a batch shape: its parameters on the GPU,
 * and the forward and backward passes recorded into a {@link Recorder}. To
 * train, use {@link Trainer}; to generate, {@link Generator}.
 *
 * @example
 * ```ts
 * const model = Llama.fromCheckpoint(gpu, await loadCheckpoint("out/ckpt.safetensors"), { batchSize: 1 });
 * const logits = await model.logits([tokenizer.encode("ROMEO:")]);
 * model.release();
 * ```
 */
export class Llama {
  /** The device. */
  readonly gpu: Gpu;
  /** The architecture. */
  readonly config: ModelConfig;
  /** Where each parameter lives in the flat buffers. */
  readonly layout: ParamLayout;
  /** All parameters, f32 (layout.total). */
  readonly params: Tensor;
  /** All gradients, f32 (layout.total); null for inference and for a frozen base under LoRA. */
  readonly grads: Tensor | null;
  /** With f16 compute: an f16 copy of the parameters that the matmuls read; else null. */
  readonly weights16: Tensor | null;
  /** Sequences per forward. */
  readonly batchSize: number;
  /** Tokens per sequence. */
  readonly blockSize: number;
  /** Saved activations and backward scratch. */
  readonly acts: Activations;
  /** Named views of the flat buffers (parameters, gradients, f16 weights). */
  readonly views: FlatViews;
  #sharesWeights: boolean;
  /** LoRA adapters on the projections (the base is then frozen), or null. */
  #lora: LoraAdapters | null;

  /**
   * Allocates parameters (uninitialised: see {@link Llama.upload}), gradients
   * when training, and activations for `batchSize` × `blockSize` tokens.
   *
   * @param gpu The device.
   * @param config The architecture.
   * @param options Batch shape and whether to allocate what training needs; `lora`
   *   adds adapters and freezes the base (no parameter gradients are allocated).
   * @example
   * ```ts
   * const model = new Llama(gpu, config, { batchSize: 12, training: true });
   * model.upload(initialParameters(model.layout, config, new Rng(1337)));
   * ```
   */
  constructor(
    gpu: Gpu,
    config: ModelConfig,
    options: LlamaOptions & { training: boolean; weightsFrom?: Llama; lora?: LoraAdapters },
  ) {
    this.gpu = gpu;
    this.config = config;
    this.layout = paramLayout(config);
    this.views = new FlatViews(this.layout, config);
    this.batchSize = options.batchSize;
    this.blockSize = options.blockSize ?? config.block_size;
    this.#sharesWeights = options.weightsFrom !== undefined;
    this.params = options.weightsFrom?.params ?? gpu.tensor([this.layout.total], "f32", { label: "params" });
    this.#lora = options.lora ?? null;
    this.grads = options.training && !this.#lora
      ? gpu.tensor([this.layout.total], "f32", { label: "grads" })
      : null;
    const dtype = options.dtype ?? "f32";
    if (dtype === "f16" && !gpu.features.f16) {
      throw new GpuError(
        `f16 compute needs usable shader-f16, which "${gpu.info.name}" lacks${
          gpu.f16Problem ? ` (${gpu.f16Problem})` : ""
        }; use dtype f32`,
      );
    }
    this.weights16 = dtype === "f16"
      ? gpu.tensor([this.layout.total], "f16", { label: "weights f16" })
      : null;
    this.acts = allocateActivations(gpu, config, {
      batchSize: this.batchSize,
      blockSize: this.blockSize,
      training: options.training,
      dtype,
    });
  }

  /**
   * Replaces every parameter.
   *
   * @param values Flat values in the layout's order (layout.total).
   */
  upload(values: Float32Array): void {
    this.gpu.write(this.params, values);
    if (this.weights16) {
      const rec = this.gpu.recorder({ label: "weights to f16" });
      this.syncWeights(rec);
      rec.submit();
    }
  }

  /**
   * Refreshes the f16 copy of the weights from the f32 parameters (after each
   * optimizer update); does nothing in f32.
   *
   * @param rec The recorder.
   */
  syncWeights(rec: Recorder): void {
    if (this.weights16) cast(rec, { out: this.weights16, x: this.params });
  }

  /**
   * Reads every parameter back.
   *
   * @returns Flat values (layout.total).
   */
  download(): Promise<Float32Array> {
    return this.gpu.readFloats(this.params);
  }

  /**
   * A model with fresh weights, initialised as nanoGPT does (normal 0.02, the
   * residual projections scaled down by depth, norms at one).
   *
   * @param gpu The device.
   * @param config The architecture (see `resolveModelConfig`).
   * @param options Batch shape, training buffers, dtype, and the seed of the weights.
   * @returns The model, ready to run.
   * @example
   * ```ts
   * const config = resolveModelConfig({ n_layer: 2, n_head: 2, n_embd: 32, block_size: 16, vocab_size: 65 });
   * const model = Llama.create(gpu, config, { batchSize: 1, seed: 1337 });
   * ```
   */
  static create(gpu: Gpu, config: ModelConfig, options: LlamaOptions & { seed?: number }): Llama {
    const model = new Llama(gpu, config, { training: false, ...options });
    model.upload(initialParameters(model.layout, config, new Rng(options.seed ?? 1337)));
    return model;
  }

  /**
   * A model holding a checkpoint's weights (from `loadCheckpoint`).
   *
   * @param gpu The device.
   * @param checkpoint The architecture and flat parameters.
   * @param options Batch shape, training buffers and dtype.
   * @returns The model.
   * @example
   * ```ts
   * const model = Llama.fromCheckpoint(gpu, await loadCheckpoint("out/ckpt.safetensors"), { batchSize: 1 });
   * ```
   */
  static fromCheckpoint(
    gpu: Gpu,
    checkpoint: { config: ModelConfig; params: Float32Array },
    options: LlamaOptions,
  ): Llama {
    const model = new Llama(gpu, checkpoint.config, { training: false, ...options });
    model.upload(checkpoint.params);
    return model;
  }

  /**
   * Runs the model on a batch of token sequences and reads back the logits of
   * every position: one submit and one readback, for inspection and tests (use
   * {@link Generator} to generate text).
   *
   * @param tokens `batchSize` sequences of equal length, at most `blockSize` tokens each.
   * @returns Logits, [batchSize, length, vocab_size] row-major.
   * @example
   * ```ts
   * const logits = await model.logits([[20, 43, 50, 50, 53]]); // Float32Array(5 * 65)
   * ```
   */
  async logits(tokens: number[][]): Promise<Float32Array> {
    const { batchSize: B, blockSize: T, gpu } = this;
    const V = this.config.vocab_size;
    const length = tokens[0]?.length ?? 0;
    if (tokens.length !== B || length < 1 || length > T || tokens.some((row) => row.length !== length)) {
      throw new ConfigError(
        `logits needs ${B} sequence(s) of equal length between 1 and ${T} tokens, ` +
          `got lengths [${tokens.map((row) => row.length).join(", ")}]`,
      );
    }
    const ids = new Uint32Array(B * T); // causal attention: padding after the sequence changes nothing before it
    tokens.forEach((row, b) =>
      row.forEach((id, t) => {
        if (!Number.isInteger(id) || id < 0 || id >= V) {
          throw new ConfigError(
            `token ${id} (sequence ${b}, position ${t}) is outside the vocabulary of ${V}`,
          );
        }
        ids[b * T + t] = id;
      })
    );
    const input = gpu.tensor([B, T], "u32", { label: "logits tokens", data: ids });
    try {
      const rec = gpu.recorder({ label: "logits" });
      this.forwardHidden(rec, { tokens: input });
      this.head(rec, { out: this.acts.logits, hidden: this.acts.lnf });
      rec.submit();
      const all = await gpu.readFloats(this.acts.logits);
      if (length === T) return all;
      const out = new Float32Array(B * length * V);
      for (let b = 0; b < B; b++) out.set(all.subarray(b * T * V, (b * T + length) * V), b * length * V);
      return out;
    } finally {
      gpu.release(input);
    }
  }

  /** Frees every buffer of the model. */
  release(): void {
    releaseActivations(this.gpu, this.acts);
    if (this.grads) this.gpu.release(this.grads);
    if (this.#sharesWeights) return;
    this.gpu.release(this.params);
    if (this.weights16) this.gpu.release(this.weights16);
  }

  /**
   * Records the forward pass and the mean loss: `loss += mean` (or `loss =`
   * without `accumulateLoss`), so micro-steps sum their losses on the GPU.
   *
   * @param rec The recorder.
   * @param args The batch, the f32 [1] loss tensor, whether to add into it, and dropout (training only).
   */
  forward(
    rec: Recorder,
    args: { batch: Batch; loss: Tensor; accumulateLoss?: boolean; dropout?: DropoutStep },
  ): void {
    const { acts } = this;
    const { batch } = args;
    this.forwardHidden(rec, { tokens: batch.tokens, dropout: args.dropout });
    this.head(rec, { out: acts.logits, hidden: acts.lnf });
    crossEntropyForward(rec, {
      losses: acts.losses,
      lse: acts.lseLogits,
      logits: acts.logits,
      targets: batch.targets,
    });
    lossMean(rec, {
      out: args.loss,
      count: acts.count,
      losses: acts.losses,
      targets: batch.targets,
      accumulate: args.accumulateLoss ?? false,
    });
  }

  /**
   * Records the forward up to the final norm: `acts.lnf` then holds each
   * position's hidden state. With a `cache`, a prefill also writes every
   * position's keys and values into it, and a decode step (blockSize 1) rotates
   * its token by the cache position, appends it to the cache and attends over
   * the cache instead of the block. On a software adapter a decode step runs
   * each layer as two dispatches (`decodeLayer`) where the shape allows
   * (`fusedDecode` forces the choice either way, for tests).
   *
   * @param rec The recorder.
   * @param args Token ids (B, T); dropout (training only); a KV cache; `fusedDecode`.
   */
  forwardHidden(
    rec: Recorder,
    args: { tokens: Tensor; dropout?: DropoutStep; cache?: KvCache; fusedDecode?: boolean },
  ): void {
    const { config, acts, views } = this;
    const { dropout: drop, cache } = args;
    const decoding = cache !== undefined && this.blockSize === 1;
    const eps = config.norm_eps;
    const heads = { nHead: config.n_head, nKvHead: config.n_kv_head };
    const W = this.weights16 ?? this.params; // what the matmuls read
    if (decoding && (args.fusedDecode ?? rec.gpu.info.fallback) && this.#fusedDecodeFits()) {
      this.#decodeFused(rec, args.tokens, cache);
      return;
    }
    const drops = (x: Tensor, site: number) => {
      if (drop && config.dropout > 0) {
        dropout(rec, {
          out: x,
          x,
          p: config.dropout,
          seed: drop.seed,
          stream: dropoutStream(config, drop, site),
        });
      }
    };

    const first = acts.layers[0];
    embeddingForward(rec, { out: first.resid, tokens: args.tokens, weight: views.embedding(this.params) });
    drops(first.resid, 0);
    rmsnormForward(rec, {
      out: first.ln1,
      rstd: first.rstd1,
      x: first.resid,
      weight: views.layer(this.params, 0).attnNorm,
      eps,
    });
    for (let l = 0; l < config.n_layer; l++) {
      const a = acts.layers[l];
      const w = views.layer(W, l);
      const gains = views.layer(this.params, l);
      linear(rec, { y: a.qkv, x: a.ln1, weight: w.qkv });
      this.#lora?.forward(rec, { layer: l, site: "qkv", x: a.ln1, y: a.qkv, dropout: drop });
      if (decoding) {
        const kv = { kCache: cache.k[l], vCache: cache.v[l], position: cache.position, ...heads };
        ropeForward(rec, { qkv: a.qkv, ...heads, theta: config.rope_theta, positionOffset: cache.position });
        kvCacheWrite(rec, { ...kv, qkv: a.qkv });
        cachedAttention(rec, { ...kv, out: a.atty, qkv: a.qkv });
      } else {
        ropeForward(rec, { qkv: a.qkv, ...heads, theta: config.rope_theta });
        attentionForward(rec, { out: a.atty, lse: a.lse, qkv: a.qkv, ...heads });
        if (cache) {
          kvCacheWrite(rec, { kCache: cache.k[l], vCache: cache.v[l], qkv: a.qkv, position: 0, ...heads });
        }
      }
      linear(rec, { y: acts.branch, x: a.atty, weight: w.attnOut });
      this.#lora?.forward(rec, { layer: l, site: "attnOut", x: a.atty, y: acts.branch, dropout: drop });
      drops(acts.branch, 1 + 2 * l);
      residualRmsnormForward(rec, {
        residualOut: a.residMid,
        out: a.ln2,
        rstd: a.rstd2,
        x: a.resid,
        branch: acts.branch,
        weight: gains.mlpNorm,
        eps,
      });

      linear(rec, { y: a.gateUp, x: a.ln2, weight: w.gateUp });
      this.#lora?.forward(rec, { layer: l, site: "gateUp", x: a.ln2, y: a.gateUp, dropout: drop });
      swigluForward(rec, { out: a.hidden, gateUp: a.gateUp });
      linear(rec, { y: acts.branch, x: a.hidden, weight: w.down });
      this.#lora?.forward(rec, { layer: l, site: "down", x: a.hidden, y: acts.branch, dropout: drop });
      drops(acts.branch, 2 + 2 * l);
      const next = l + 1 < config.n_layer ? acts.layers[l + 1] : null;
      residualRmsnormForward(rec, {
        residualOut: next ? next.resid : acts.residOut,
        out: next ? next.ln1 : acts.lnf,
        rstd: next ? next.rstd1 : acts.rstdf,
        x: a.residMid,
        branch: acts.branch,
        weight: next ? views.layer(this.params, l + 1).attnNorm : views.finalNorm(this.params),
        eps,
      });
    }
  }

  /** Whether a decoding step can run each layer as {@link decodeLayer}'s two dispatches. */
  #fusedDecodeFits(): boolean {
    const { config } = this;
    return this.weights16 === null && this.#lora === null &&
      decodeLayerFits(this.gpu, {
        B: this.batchSize,
        C: config.n_embd,
        NH: config.n_head,
        NKV: config.n_kv_head,
        HS: headSize(config),
        H: config.mlp_hidden,
        Tmax: config.block_size,
      });
  }

  /**
   * A decoding step with two dispatches a layer (software adapters, where each
   * dispatch costs more than a layer's work for one token): the residual stream
   * stays in the first layer's `resid`, and `acts.lnf` gets the final norm.
   */
  #decodeFused(rec: Recorder, tokens: Tensor, cache: KvCache): void {
    const { config, acts, views } = this;
    const resid = acts.layers[0].resid.view(0, [this.batchSize, config.n_embd]);
    embeddingForward(rec, { out: resid, tokens, weight: views.embedding(this.params) });
    for (let l = 0; l < config.n_layer; l++) {
      decodeLayer(rec, {
        resid,
        qkv: acts.layers[l].qkv,
        kCache: cache.k[l],
        vCache: cache.v[l],
        position: cache.position,
        weights: views.layer(this.params, l),
        nHead: config.n_head,
        nKvHead: config.n_kv_head,
        eps: config.norm_eps,
        theta: config.rope_theta,
      });
    }
    rmsnormForward(rec, {
      out: acts.lnf,
      rstd: acts.rstdf,
      x: acts.layers[0].resid,
      weight: views.finalNorm(this.params),
      eps: config.norm_eps,
    });
  }

  /**
   * Records logits = lm_head(hidden): every position, or one selected position per sequence.
   *
   * @param rec The recorder.
   * @param args `out` (…, V), `hidden` (…, C) in the compute dtype.
   */
  head(rec: Recorder, args: { out: Tensor; hidden: Tensor }): void {
    linear(rec, { y: args.out, x: args.hidden, weight: this.views.lmHead(this.weights16 ?? this.params) });
  }

  /**
   * Records the backward pass of the last recorded forward of this batch, adding
   * every parameter's gradient into `grads`.
   *
   * @param rec The recorder (the same one as the forward, after it).
   * @param args The batch (with its embedding index), the dropout of the forward,
   *   and `scale`: the loss-gradient multiplier, a number (1/gradient_accumulation_steps) or an f32 [1]
   *   tensor (the dynamic loss scale of f16 training, read on the GPU).
   */
  backward(rec: Recorder, args: { batch: Batch; dropout?: DropoutStep; scale: number | Tensor }): void {
    recordBackward(this, rec, { ...args, lora: this.#lora });
  }
}

/**
 * The dropout stream of a call site: 2·L + 1 sites per micro-step (the
 * embeddings, then each layer's attention and MLP branches), so no two masks
 * of a step coincide.
 *
 * @param config The model (for n_layer).
 * @param drop The micro-step's dropout.
 * @param site 0 for the embeddings, 1 + 2l and 2 + 2l for layer l's branches.
 * @returns The stream number.
 */
export function dropoutStream(config: ModelConfig, drop: DropoutStep, site: number): number {
  return drop.micro * (2 * config.n_layer + 1) + site;
}

/**
 * Training FLOPs per token (forward + backward), nanoGPT's estimate: 6 per
 * parameter (non-embedding, plus lm_head's matmul) and 12·L·C·T for attention.
 *
 * @param config The model.
 * @param nonEmbeddingParams Parameters outside the embedding table.
 * @returns FLOPs per token.
 */
export function flopsPerToken(config: ModelConfig, nonEmbeddingParams: number): number {
  const lmHead = config.vocab_size * config.n_embd;
  return 6 * (nonEmbeddingParams + (config.tie_embeddings ? lmHead : 0)) +
    12 * config.n_layer * config.n_head * headSize(config) * config.block_size;
}
