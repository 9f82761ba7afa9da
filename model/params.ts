/**
 * The parameter table (llm.c style): one list of named tensors drives the offsets
 * of the parameters, gradients and both AdamW moments in their flat buffers, the
 * weight-decay mask, the initialisation, and the checkpoint's tensor names (the
 * Hugging Face LLaMA names, weights as [out_features, in_features]).
 *
 * q/k/v of a layer sit back to back, as do gate/up, so one matmul against the
 * stacked rows computes all three (or both) projections.
 *
 * @module
 */

import { headSize, type ModelConfig } from "./config.ts";
import type { Rng } from "./rng.ts";

/**
 * How a tensor is initialised: normal(0, 0.02), the residual projections'
 * depth-scaled normal, or ones for norm gains.
 *
 * @example
 * ```ts
 * const gains = paramLayout(config).tensors.filter((t) => t.init === "ones").map((t) => t.name);
 * // ["model.layers.0.input_layernorm.weight", ..., "model.norm.weight"]
 * ```
 */
export type ParamInit = "normal" | "residual" | "ones";

/**
 * One parameter tensor's place in the flat buffers, under its Hugging Face name.
 *
 * @example
 * ```ts
 * const params = await model.download();
 * const embedding: ParamTensor = model.layout.embedding; // shape [vocab_size, n_embd]
 * const row0 = params.subarray(embedding.offset, embedding.offset + embedding.shape[1]);
 * ```
 */
export interface ParamTensor {
  /** Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`. */
  name: string;
  /** Shape, [out_features, in_features] for matrices. */
  shape: number[];
  /** First element in the flat buffers. */
  offset: number;
  /** Elements. */
  length: number;
  /** AdamW decays it (matrices and embeddings; not norm gains). */
  decay: boolean;
  /** Initialisation rule. */
  init: ParamInit;
}

/**
 * Offsets of one layer's tensors and fused groups (q/k/v and gate/up stacked).
 *
 * @example
 * ```ts
 * const layer0: LayerParams = paramLayout(config).layers[0];
 * console.log(layer0.attnOut.name, layer0.qkv.rows); // model.layers.0.self_attn.o_proj.weight 384
 * ```
 */
export interface LayerParams {
  /** input_layernorm gain [C]. */
  attnNorm: ParamTensor;
  /** q, k, v stacked: [(NH + 2·NKV)·HS, C] starting at q's offset. */
  qkv: { offset: number; rows: number };
  /** o_proj [C, NH·HS]. */
  attnOut: ParamTensor;
  /** post_attention_layernorm gain [C]. */
  mlpNorm: ParamTensor;
  /** gate and up stacked: [2·H, C] starting at gate's offset. */
  gateUp: { offset: number; rows: number };
  /** down_proj [C, H]. */
  down: ParamTensor;
}

/**
 * Where every parameter lives in the flat buffers of parameters, gradients and
 * AdamW moments; also the checkpoint's list of tensors.
 *
 * @example
 * ```ts
 * const layout: ParamLayout = paramLayout(config);
 * for (const t of layout.tensors) console.log(t.name, t.shape, t.offset);
 * console.log(layout.count, layout.total); // real parameters; elements with alignment padding
 * ```
 */
export interface ParamLayout {
  /** All tensors in buffer order. */
  tensors: ParamTensor[];
  /** Elements in each flat buffer (with alignment padding). */
  total: number;
  /** Elements of real parameters (no padding). */
  count: number;
  /** model.embed_tokens.weight [V, C]. */
  embedding: ParamTensor;
  /** Per layer. */
  layers: LayerParams[];
  /** model.norm.weight [C]. */
  finalNorm: ParamTensor;
  /** lm_head.weight [V, C]: the embedding itself when tied. */
  lmHead: ParamTensor;
}

/**
 * Every offset a kernel binds starts on this many elements: 256 bytes in the f16
 * copy of the weights (512 in f32), the largest storage-offset alignment WebGPU
 * allows a device to demand.
 */
export const PARAM_ALIGNMENT = 128;

/**
 * Lays the model's parameters out in flat buffers.
 *
 * @param config The model config.
 * @returns The layout.
 * @example
 * ```ts
 * const layout = paramLayout(config);
 * layout.tensors.map((t) => t.name); // ["model.embed_tokens.weight", ...]
 * ```
 */
export function paramLayout(config: ModelConfig): ParamLayout {
  const C = config.n_embd;
  const HS = headSize(config);
  const H = config.mlp_hidden;
  const tensors: ParamTensor[] = [];
  let cursor = 0;
  const align = () => cursor = Math.ceil(cursor / PARAM_ALIGNMENT) * PARAM_ALIGNMENT;
  const add = (name: string, shape: number[], init: ParamInit): ParamTensor => {
    const length = shape.reduce((a, b) => a * b, 1);
    const tensor = { name, shape, offset: cursor, length, decay: shape.length >= 2, init };
    tensors.push(tensor);
    cursor += length;
    return tensor;
  };

  const embedding = add("model.embed_tokens.weight", [config.vocab_size, C], "normal");
  const layers: LayerParams[] = [];
  for (let l = 0; l < config.n_layer; l++) {
    const p = `model.layers.${l}`;
    align();
    const attnNorm = add(`${p}.input_layernorm.weight`, [C], "ones");
    align();
    const q = add(`${p}.self_attn.q_proj.weight`, [config.n_head * HS, C], "normal");
    add(`${p}.self_attn.k_proj.weight`, [config.n_kv_head * HS, C], "normal");
    add(`${p}.self_attn.v_proj.weight`, [config.n_kv_head * HS, C], "normal");
    align();
    const attnOut = add(`${p}.self_attn.o_proj.weight`, [C, config.n_head * HS], "residual");
    align();
    const mlpNorm = add(`${p}.post_attention_layernorm.weight`, [C], "ones");
    align();
    const gate = add(`${p}.mlp.gate_proj.weight`, [H, C], "normal");
    add(`${p}.mlp.up_proj.weight`, [H, C], "normal");
    align();
    const down = add(`${p}.mlp.down_proj.weight`, [C, H], "residual");
    layers.push({
      attnNorm,
      qkv: { offset: q.offset, rows: (config.n_head + 2 * config.n_kv_head) * HS },
      attnOut,
      mlpNorm,
      gateUp: { offset: gate.offset, rows: 2 * H },
      down,
    });
  }
  align();
  const finalNorm = add("model.norm.weight", [C], "ones");
  let lmHead = embedding;
  if (!config.tie_embeddings) {
    align();
    lmHead = add("lm_head.weight", [config.vocab_size, C], "normal");
  }
  align();
  const count = tensors.reduce((sum, t) => sum + t.length, 0);
  return { tensors, total: cursor, count, embedding, layers, finalNorm, lmHead };
}

/**
 * Parameter counts as nanoGPT prints them.
 *
 * @param layout The layout.
 * @returns Total parameters, and without the token embedding (nanoGPT's "non-embedding" count;
 *   an untied lm_head still counts).
 * @example
 * ```ts
 * const { total, nonEmbedding } = parameterCounts(paramLayout(config));
 * console.log(`${(total / 1e6).toFixed(2)}M parameters, ${nonEmbedding} outside the embedding`);
 * ```
 */
export function parameterCounts(layout: ParamLayout): { total: number; nonEmbedding: number } {
  return { total: layout.count, nonEmbedding: layout.count - layout.embedding.length };
}

/**
 * Initial values: normal(0, 0.02); the output projection of each residual branch
 * (o_proj, down_proj) normal(0, 0.02/√(2·n_layer)) as in GPT-2, so the residual
 * stream's variance does not grow with depth; norm gains 1. Padding stays 0.
 *
 * @param layout The layout.
 * @param config The model config (for n_layer).
 * @param rng Seeded generator.
 * @returns The flat parameter values.
 */
export function initialParameters(layout: ParamLayout, config: ModelConfig, rng: Rng): Float32Array {
  const values = new Float32Array(layout.total);
  const residualStd = 0.02 / Math.sqrt(2 * config.n_layer);
  for (const t of layout.tensors) {
    const target = values.subarray(t.offset, t.offset + t.length);
    if (t.init === "ones") target.fill(1);
    else {
      const std = t.init === "residual" ? residualStd : 0.02;
      for (let i = 0; i < t.length; i++) target[i] = std * rng.normal();
    }
  }
  return values;
}
