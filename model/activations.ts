/**
 * Activation buffers for one (batch, block) shape, allocated once and reused by
 * every step: what the forward saves for the backward, and the backward's
 * scratch. Each tensor has a buffer of its own, because WebGPU will not bind one
 * buffer read-only and read-write in the same dispatch.
 *
 * @module
 */

import type { Gpu } from "../kernels/device.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { headSize, type ModelConfig } from "./config.ts";

/**
 * What the forward saves for one layer, N = B·T rows: read one to inspect a
 * layer's intermediate values after a forward.
 *
 * @example
 * ```ts
 * await model.logits([tokenizer.encode("ROMEO:")]);
 * const layer0: LayerActivations = model.acts.layers[0];
 * const rstd = await gpu.read(layer0.rstd1); // 1/rms of each row entering layer 0
 * ```
 */
export interface LayerActivations {
  /** Residual stream entering the layer (N, C). */
  resid: Tensor;
  /** RMSNorm of resid: the attention's input (N, C). */
  ln1: Tensor;
  /** 1/rms of each row of resid (N). */
  rstd1: Tensor;
  /** q, k, v after RoPE (B, T, (NH + 2·NKV)·HS). */
  qkv: Tensor;
  /** Attention output, heads side by side (B, T, NH·HS). */
  atty: Tensor;
  /** Log-sum-exp of each attention row (B, NH, T). */
  lse: Tensor;
  /** Residual stream after the attention branch (N, C). */
  residMid: Tensor;
  /** RMSNorm of residMid: the MLP's input (N, C). */
  ln2: Tensor;
  /** 1/rms of each row of residMid (N). */
  rstd2: Tensor;
  /** gate and up projections side by side (N, 2·H); the backward overwrites it with their gradient. */
  gateUp: Tensor;
  /** silu(gate)·up (N, H). */
  hidden: Tensor;
}

/**
 * Every activation of one (B, T) shape (`model.acts`), allocated once with the
 * model and overwritten by each forward.
 *
 * @example
 * ```ts
 * const acts: Activations = model.acts;
 * await model.logits([tokenizer.encode("ROMEO:")]);
 * const hidden = await gpu.read(acts.lnf); // (B, T, C): each position's final hidden state
 * ```
 */
export interface Activations {
  /** Rows N = B·T. */
  rows: number;
  /** Per layer. */
  layers: LayerActivations[];
  /** Residual stream after the last layer (N, C). */
  residOut: Tensor;
  /** Final RMSNorm (N, C). */
  lnf: Tensor;
  /** Its 1/rms (N). */
  rstdf: Tensor;
  /** Logits (N, V); the backward overwrites them with their gradient. */
  logits: Tensor;
  /** Per-row loss (N). */
  losses: Tensor;
  /** Per-row log-sum-exp over the vocabulary (N). */
  lseLogits: Tensor;
  /** Non-ignored target count (1, u32). */
  count: Tensor;
  /** A residual branch's output before it joins the stream (N, C). */
  branch: Tensor;
  /** Backward scratch; absent for inference. */
  grad?: {
    /** Gradient of the residual stream (N, C). */
    resid: Tensor;
    /** Gradient of a norm's output (N, C). */
    ln: Tensor;
    /** Gradient of a branch after its dropout is undone (N, C). */
    branch: Tensor;
    /** Gradient of the attention output (N, NH·HS). */
    atty: Tensor;
    /** Gradient of q, k, v (N, (NH + 2·NKV)·HS). */
    qkv: Tensor;
    /** Gradient of the MLP hidden layer (N, H). */
    hidden: Tensor;
  };
}

/**
 * Allocates the activations of a batch of `batchSize` sequences of `blockSize` tokens.
 *
 * @param gpu The device.
 * @param config The model.
 * @param shape Batch size, tokens per sequence, whether to allocate backward scratch,
 *   and the compute dtype (f16: the matmul, attention, norm and SwiGLU tensors are f16).
 * @returns The buffers.
 */
export function allocateActivations(
  gpu: Gpu,
  config: ModelConfig,
  shape: { batchSize: number; blockSize: number; training: boolean; dtype?: "f32" | "f16" },
): Activations {
  const { batchSize: B, blockSize: T } = shape;
  const dtype = shape.dtype ?? "f32";
  const N = B * T;
  const C = config.n_embd;
  const HS = headSize(config);
  const QKV = (config.n_head + 2 * config.n_kv_head) * HS;
  const H = config.mlp_hidden;
  const V = config.vocab_size;
  const f32 = (label: string, dims: number[]) => gpu.tensor(dims, "f32", { label });
  // Matmul, attention, norm and SwiGLU inputs and outputs take the compute dtype; the
  // residual stream, its gradient and the per-row statistics stay f32.
  const act = (label: string, dims: number[]) => gpu.tensor(dims, dtype, { label });
  const layers: LayerActivations[] = [];
  for (let l = 0; l < config.n_layer; l++) {
    const at = (name: string) => `layer ${l} ${name}`;
    layers.push({
      resid: f32(at("resid"), [B, T, C]),
      ln1: act(at("ln1"), [B, T, C]),
      rstd1: f32(at("rstd1"), [N]),
      qkv: act(at("qkv"), [B, T, QKV]),
      atty: act(at("atty"), [B, T, config.n_head * HS]),
      lse: f32(at("attention lse"), [B, config.n_head, T]),
      residMid: f32(at("residMid"), [B, T, C]),
      ln2: act(at("ln2"), [B, T, C]),
      rstd2: f32(at("rstd2"), [N]),
      gateUp: act(at("gateUp"), [B, T, 2 * H]),
      hidden: act(at("hidden"), [B, T, H]),
    });
  }
  return {
    rows: N,
    layers,
    residOut: f32("resid out", [B, T, C]),
    lnf: act("lnf", [B, T, C]),
    rstdf: f32("rstdf", [N]),
    logits: act("logits", [B, T, V]),
    losses: f32("losses", [N]),
    lseLogits: f32("logits lse", [N]),
    count: gpu.tensor([1], "u32", { label: "target count" }),
    branch: act("branch", [B, T, C]),
    grad: shape.training
      ? {
        resid: f32("d resid", [B, T, C]),
        ln: act("d ln", [B, T, C]),
        branch: f32("d branch", [B, T, C]),
        atty: act("d atty", [B, T, config.n_head * HS]),
        qkv: act("d qkv", [B, T, QKV]),
        hidden: act("d hidden", [B, T, H]),
      }
      : undefined,
  };
}

/**
 * Frees every activation buffer.
 *
 * @param gpu The device.
 * @param acts The activations.
 */
export function releaseActivations(gpu: Gpu, acts: Activations): void {
  const all: Tensor[] = [
    ...acts.layers.flatMap((l) => Object.values(l) as Tensor[]),
    acts.residOut,
    acts.lnf,
    acts.rstdf,
    acts.logits,
    acts.losses,
    acts.lseLogits,
    acts.count,
    acts.branch,
    ...(acts.grad ? Object.values(acts.grad) : []),
  ];
  for (const t of all) gpu.release(t);
}
