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
import { attentionBackward, attentionForward } from "../kernels/attention.ts";
import { crossEntropyBackward, crossEntropyForward, lossMean } from "../kernels/cross_entropy.ts";
import { dropout, dropoutBackward, type DropoutSeed } from "../kernels/dropout.ts";
import { embeddingBackward, embeddingForward, type EmbeddingIndexBuffer } from "../kernels/embedding.ts";
import { cachedAttention, kvCacheWrite } from "../kernels/kv_cache.ts";
import { matmul } from "../kernels/matmul.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { cast } from "../kernels/elementwise.ts";
import { GpuError } from "../kernels/errors.ts";
import { residualRmsnormForward, rmsnormBackward, rmsnormForward } from "../kernels/rmsnorm.ts";
import { ropeBackward, ropeForward } from "../kernels/rope.ts";
import { swigluBackward, swigluForward } from "../kernels/swiglu.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { type Activations, allocateActivations, releaseActivations } from "./activations.ts";
import { headSize, type ModelConfig } from "./config.ts";
import { type ParamLayout, paramLayout } from "./params.ts";

/** A (B, T, X) activation seen as the (B·T, X) matrix matmul expects. */
function rows(t: Tensor): Tensor {
  return t.reshape([t.length / t.shape[t.shape.length - 1], t.shape[t.shape.length - 1]]);
}

/** One micro-batch on the GPU. */
export interface Batch {
  /** Input token ids, u32 (B, T). */
  tokens: Tensor;
  /** Next-token targets, u32 (B, T). */
  targets: Tensor;
  /** The embedding-backward index of `tokens` (training only). */
  index?: EmbeddingIndexBuffer;
}

/** Keys and values of every layer for incremental decoding, and the position of the next token. */
export interface KvCache {
  /** Keys per layer (B, Tmax, NKV·HS). */
  k: Tensor[];
  /** Values per layer (B, Tmax, NKV·HS). */
  v: Tensor[];
  /** u32 [1]: where a decode step's token goes (its RoPE position and cache slot). */
  position: Tensor;
}

/** Dropout for one micro-step: the step's seed and a stream number no other micro-step uses. */
export interface DropoutStep {
  /** The per-step seed buffer. */
  seed: DropoutSeed;
  /** Micro-step number within the step. */
  micro: number;
}

/** A LLaMA model bound to a device and a batch shape. */
export class Llama {
  /** The device. */
  readonly gpu: Gpu;
  /** The architecture. */
  readonly config: ModelConfig;
  /** Where each parameter lives in the flat buffers. */
  readonly layout: ParamLayout;
  /** All parameters, f32 (layout.total). */
  readonly params: Tensor;
  /** All gradients, f32 (layout.total); null for inference. */
  readonly grads: Tensor | null;
  /** With f16 compute: an f16 copy of the parameters that the matmuls read; else null. */
  readonly weights16: Tensor | null;
  /** Sequences per forward. */
  readonly batchSize: number;
  /** Tokens per sequence. */
  readonly blockSize: number;
  /** Saved activations and backward scratch. */
  readonly acts: Activations;
  #sharesWeights: boolean;

  /**
   * Allocates parameters (uninitialised: see {@link Llama.upload}), gradients
   * when training, and activations for `batchSize` × `blockSize` tokens.
   *
   * @param gpu The device.
   * @param config The architecture.
   * @param options Batch shape and whether to allocate what training needs.
   * @example
   * ```ts
   * const model = new Llama(gpu, config, { batchSize: 12, training: true });
   * model.upload(initialParameters(model.layout, config, new Rng(1337)));
   * ```
   */
  constructor(
    gpu: Gpu,
    config: ModelConfig,
    options: {
      batchSize: number;
      blockSize?: number;
      training: boolean;
      dtype?: "f32" | "f16";
      weightsFrom?: Llama;
    },
  ) {
    this.gpu = gpu;
    this.config = config;
    this.layout = paramLayout(config);
    this.batchSize = options.batchSize;
    this.blockSize = options.blockSize ?? config.block_size;
    this.#sharesWeights = options.weightsFrom !== undefined;
    this.params = options.weightsFrom?.params ?? gpu.tensor([this.layout.total], "f32", { label: "params" });
    this.grads = options.training ? gpu.tensor([this.layout.total], "f32", { label: "grads" }) : null;
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

  /** Reads every parameter back. @returns Flat values (layout.total). */
  download(): Promise<Float32Array> {
    return this.gpu.readFloats(this.params);
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
    matmul(rec, {
      out: rows(acts.logits),
      a: rows(acts.lnf),
      b: this.#lmHead(this.weights16 ?? this.params),
      transposeB: true,
    });
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
   * the cache instead of the block.
   *
   * @param rec The recorder.
   * @param args Token ids (B, T); dropout (training only); a KV cache.
   */
  forwardHidden(rec: Recorder, args: { tokens: Tensor; dropout?: DropoutStep; cache?: KvCache }): void {
    const { config, acts } = this;
    const { dropout: drop, cache } = args;
    const decoding = cache !== undefined && this.blockSize === 1;
    const p = drop ? config.dropout : 0;
    const eps = config.norm_eps;
    const heads = { nHead: config.n_head, nKvHead: config.n_kv_head };
    const first = acts.layers[0];
    const W = this.weights16 ?? this.params; // what the matmuls read

    embeddingForward(rec, { out: first.resid, tokens: args.tokens, weight: this.#embedding(this.params) });
    if (p > 0) {
      dropout(rec, { out: first.resid, x: first.resid, p, seed: drop!.seed, stream: this.#stream(drop!, 0) });
    }
    rmsnormForward(rec, {
      out: first.ln1,
      rstd: first.rstd1,
      x: first.resid,
      weight: this.#attnNorm(0),
      eps,
    });

    for (let l = 0; l < config.n_layer; l++) {
      const a = acts.layers[l];
      const w = this.layout.layers[l];
      matmul(rec, { out: rows(a.qkv), a: rows(a.ln1), b: this.#qkvWeight(W, l), transposeB: true });
      if (decoding) {
        ropeForward(rec, { qkv: a.qkv, ...heads, theta: config.rope_theta, positionOffset: cache.position });
        kvCacheWrite(rec, {
          kCache: cache.k[l],
          vCache: cache.v[l],
          qkv: a.qkv,
          position: cache.position,
          ...heads,
        });
        cachedAttention(rec, {
          out: a.atty,
          qkv: a.qkv,
          kCache: cache.k[l],
          vCache: cache.v[l],
          position: cache.position,
          ...heads,
        });
      } else {
        ropeForward(rec, { qkv: a.qkv, ...heads, theta: config.rope_theta });
        attentionForward(rec, { out: a.atty, lse: a.lse, qkv: a.qkv, ...heads });
        if (cache) {
          kvCacheWrite(rec, { kCache: cache.k[l], vCache: cache.v[l], qkv: a.qkv, position: 0, ...heads });
        }
      }
      matmul(rec, {
        out: rows(acts.branch),
        a: rows(a.atty),
        b: this.#view(W, w.attnOut),
        transposeB: true,
      });
      if (p > 0) {
        dropout(rec, {
          out: acts.branch,
          x: acts.branch,
          p,
          seed: drop!.seed,
          stream: this.#stream(drop!, 1 + 2 * l),
        });
      }
      residualRmsnormForward(rec, {
        residualOut: a.residMid,
        out: a.ln2,
        rstd: a.rstd2,
        x: a.resid,
        branch: acts.branch,
        weight: this.#view(this.params, w.mlpNorm),
        eps,
      });

      matmul(rec, {
        out: rows(a.gateUp),
        a: rows(a.ln2),
        b: this.#gateUpWeight(W, l),
        transposeB: true,
      });
      swigluForward(rec, { out: a.hidden, gateUp: a.gateUp });
      matmul(rec, {
        out: rows(acts.branch),
        a: rows(a.hidden),
        b: this.#view(W, w.down),
        transposeB: true,
      });
      if (p > 0) {
        dropout(rec, {
          out: acts.branch,
          x: acts.branch,
          p,
          seed: drop!.seed,
          stream: this.#stream(drop!, 2 + 2 * l),
        });
      }
      const last = l === config.n_layer - 1;
      const next = last ? null : acts.layers[l + 1];
      residualRmsnormForward(rec, {
        residualOut: next ? next.resid : acts.residOut,
        out: next ? next.ln1 : acts.lnf,
        rstd: next ? next.rstd1 : acts.rstdf,
        x: a.residMid,
        branch: acts.branch,
        weight: next ? this.#attnNorm(l + 1) : this.#view(this.params, this.layout.finalNorm),
        eps,
      });
    }
  }

  /**
   * Records logits = lm_head(rows): e.g. one selected position per sequence.
   *
   * @param rec The recorder.
   * @param args `out` (R, V), `hidden` (R, C) in the compute dtype.
   */
  head(rec: Recorder, args: { out: Tensor; hidden: Tensor }): void {
    matmul(rec, {
      out: rows(args.out),
      a: rows(args.hidden),
      b: this.#lmHead(this.weights16 ?? this.params),
      transposeB: true,
    });
  }

  /**
   * Records the backward pass of the last recorded forward of this batch, adding
   * every parameter's gradient into `grads`.
   *
   * @param rec The recorder (the same one as the forward, after it).
   * @param args The batch (with its embedding index), the dropout of the forward,
   *   and `scale`: the loss-gradient multiplier (1/gradient_accumulation_steps, times the loss scale in f16).
   */
  backward(rec: Recorder, args: { batch: Batch; dropout?: DropoutStep; scale: number | Tensor }): void {
    const { config, acts } = this;
    const g = acts.grad;
    const grads = this.grads;
    if (!g || !grads || !args.batch.index) {
      throw new Error(
        "backward needs a model created with training: true and a batch with an embedding index",
      );
    }
    const drop = args.dropout;
    const W = this.weights16 ?? this.params;
    const p = drop ? config.dropout : 0;
    const heads = { nHead: config.n_head, nKvHead: config.n_kv_head };

    // lm_head and the final norm. The logits become their own gradient.
    crossEntropyBackward(rec, {
      dlogits: acts.logits,
      logits: acts.logits,
      lse: acts.lseLogits,
      targets: args.batch.targets,
      count: acts.count,
      scale: args.scale,
    });
    matmul(rec, { out: rows(g.ln), a: rows(acts.logits), b: this.#lmHead(W) });
    matmul(rec, {
      out: this.#lmHead(grads),
      a: rows(acts.logits),
      b: rows(acts.lnf),
      transposeA: true,
      accumulate: true,
    });
    rmsnormBackward(rec, {
      dx: g.resid,
      dweight: this.#view(grads, this.layout.finalNorm),
      dout: g.ln,
      x: acts.residOut,
      weight: this.#view(this.params, this.layout.finalNorm),
      rstd: acts.rstdf,
    });

    for (let l = config.n_layer - 1; l >= 0; l--) {
      const a = acts.layers[l];
      const w = this.layout.layers[l];
      // MLP branch: g.resid holds d(residual after the MLP).
      const dMlp = p > 0 ? g.branch : g.resid;
      if (p > 0) {
        dropoutBackward(rec, {
          dx: g.branch,
          dout: g.resid,
          p,
          seed: drop!.seed,
          stream: this.#stream(drop!, 2 + 2 * l),
        });
      }
      matmul(rec, { out: rows(g.hidden), a: rows(dMlp), b: this.#view(W, w.down) });
      matmul(rec, {
        out: this.#view(grads, w.down),
        a: rows(dMlp),
        b: rows(a.hidden),
        transposeA: true,
        accumulate: true,
      });
      swigluBackward(rec, { dgateUp: a.gateUp, dout: g.hidden, gateUp: a.gateUp });
      matmul(rec, { out: rows(g.ln), a: rows(a.gateUp), b: this.#gateUpWeight(W, l) });
      matmul(rec, {
        out: this.#gateUpWeight(grads, l),
        a: rows(a.gateUp),
        b: rows(a.ln2),
        transposeA: true,
        accumulate: true,
      });
      rmsnormBackward(rec, {
        dx: g.resid,
        dweight: this.#view(grads, w.mlpNorm),
        dout: g.ln,
        x: a.residMid,
        weight: this.#view(this.params, w.mlpNorm),
        rstd: a.rstd2,
        accumulate: true,
      });

      // Attention branch: g.resid holds d(residual after the attention).
      const dAttn = p > 0 ? g.branch : g.resid;
      if (p > 0) {
        dropoutBackward(rec, {
          dx: g.branch,
          dout: g.resid,
          p,
          seed: drop!.seed,
          stream: this.#stream(drop!, 1 + 2 * l),
        });
      }
      matmul(rec, { out: rows(g.atty), a: rows(dAttn), b: this.#view(W, w.attnOut) });
      matmul(rec, {
        out: this.#view(grads, w.attnOut),
        a: rows(dAttn),
        b: rows(a.atty),
        transposeA: true,
        accumulate: true,
      });
      attentionBackward(rec, { dqkv: g.qkv, dout: g.atty, out: a.atty, lse: a.lse, qkv: a.qkv, ...heads });
      ropeBackward(rec, { dqkv: g.qkv, ...heads, theta: config.rope_theta });
      matmul(rec, { out: rows(g.ln), a: rows(g.qkv), b: this.#qkvWeight(W, l) });
      matmul(rec, {
        out: this.#qkvWeight(grads, l),
        a: rows(g.qkv),
        b: rows(a.ln1),
        transposeA: true,
        accumulate: true,
      });
      rmsnormBackward(rec, {
        dx: g.resid,
        dweight: this.#view(grads, w.attnNorm),
        dout: g.ln,
        x: a.resid,
        weight: this.#attnNorm(l),
        rstd: a.rstd1,
        accumulate: true,
      });
    }

    // g.resid holds d(embedding output after dropout).
    let dEmbedding = g.resid;
    if (p > 0) {
      dropoutBackward(rec, {
        dx: g.branch,
        dout: g.resid,
        p,
        seed: drop!.seed,
        stream: this.#stream(drop!, 0),
      });
      dEmbedding = g.branch;
    }
    embeddingBackward(rec, { dweight: this.#embedding(grads), dout: dEmbedding, index: args.batch.index });
  }

  /** A stream per dropout site: 2·L + 1 sites per micro-step. */
  #stream(drop: DropoutStep, site: number): number {
    return drop.micro * (2 * this.config.n_layer + 1) + site;
  }

  #view(flat: Tensor, t: { offset: number; shape: number[]; name: string }): Tensor {
    return flat.view(t.offset, t.shape, `${flat.label} ${t.name}`);
  }

  #embedding(flat: Tensor): Tensor {
    return this.#view(flat, this.layout.embedding);
  }

  #lmHead(flat: Tensor): Tensor {
    return this.#view(flat, this.layout.lmHead);
  }

  #attnNorm(l: number): Tensor {
    return this.#view(this.params, this.layout.layers[l].attnNorm);
  }

  #qkvWeight(flat: Tensor, l: number): Tensor {
    const { offset, rows } = this.layout.layers[l].qkv;
    return flat.view(offset, [rows, this.config.n_embd], `${flat.label} layer ${l} qkv`);
  }

  #gateUpWeight(flat: Tensor, l: number): Tensor {
    const { offset, rows } = this.layout.layers[l].gateUp;
    return flat.view(offset, [rows, this.config.n_embd], `${flat.label} layer ${l} gate_up`);
  }
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
