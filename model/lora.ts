/**
 * LoRA (Hu et al. 2021) as PEFT defines it: a frozen projection y = x·Wᵀ gains
 * a trainable low-rank path, y = x·Wᵀ + (alpha/rank)·dropout(x)·Aᵀ·Bᵀ, with
 * A [rank, in_features] drawn like PEFT's Kaiming-uniform and B [out_features, rank]
 * zero, so training starts from the base model exactly.
 *
 * This file holds what needs no GPU: the settings, the adapter table (one A and
 * one B per layer and target, named as PEFT names them, laid out in one flat
 * buffer like the model's parameters), the initial values, and merging an
 * adapter into the base weights (W += (alpha/rank)·B·A).
 *
 * @module
 */

import { ConfigError, headSize, type ModelConfig } from "./config.ts";
import { PARAM_ALIGNMENT, paramLayout } from "./params.ts";
import type { Rng } from "./rng.ts";

/**
 * The projections an adapter can attach to, by their short PEFT target names.
 *
 * @example
 * ```ts
 * LORA_TARGETS.includes("q"); // true
 * ```
 */
export const LORA_TARGETS = ["q", "k", "v", "o", "gate", "up", "down"] as const;

/**
 * One of {@link LORA_TARGETS}.
 *
 * @example
 * ```ts
 * const target: LoraTarget = "v";
 * ```
 */
export type LoraTarget = typeof LORA_TARGETS[number];

/**
 * Which fused matmul of a layer computes a projection (see `LayerViews`).
 *
 * @example
 * ```ts
 * projectionOf(config, "k").site; // "qkv"
 * ```
 */
export type ProjectionSite = "qkv" | "attnOut" | "gateUp" | "down";

/**
 * An adapter's settings, stored in its file.
 *
 * @example
 * ```ts
 * const lora: LoraConfig = { rank: 16, alpha: 32, dropout: 0.05, targets: ["q", "k", "v", "o"] };
 * ```
 */
export interface LoraConfig {
  /** Rank r of A [r, in] and B [out, r]. */
  rank: number;
  /** The update is scaled by alpha / rank. */
  alpha: number;
  /** Dropout on the adapter's input while training (0: none). */
  dropout: number;
  /** Projections that get an adapter, in {@link LORA_TARGETS} order. */
  targets: LoraTarget[];
}

/**
 * PEFT's defaults for a LLaMA: rank 8, alpha 16, no dropout, q and v.
 *
 * @example
 * ```ts
 * const lora = { ...LORA_DEFAULTS, rank: 4 };
 * ```
 */
export const LORA_DEFAULTS: Readonly<LoraConfig> = Object.freeze({
  rank: 8,
  alpha: 16,
  dropout: 0,
  targets: ["q", "v"] as LoraTarget[],
});

/**
 * One A or B matrix in the adapter's flat buffers.
 *
 * @example
 * ```ts
 * const a = loraLayout(config, LORA_DEFAULTS).tensors[0]; // q_proj.lora_A of layer 0
 * ```
 */
export interface LoraTensor {
  /** PEFT name, e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`. */
  name: string;
  /** [rank, in_features] for A, [out_features, rank] for B. */
  shape: [number, number];
  /** First element in the flat buffers. */
  offset: number;
  /** Elements. */
  length: number;
}

/**
 * One adapted projection of one layer.
 *
 * @example
 * ```ts
 * for (const m of loraLayout(config, LORA_DEFAULTS).modules) console.log(m.layer, m.target, m.a.shape, m.b.shape);
 * ```
 */
export interface LoraModule {
  /** The layer. */
  layer: number;
  /** Which projection. */
  target: LoraTarget;
  /** The fused matmul whose output holds this projection. */
  site: ProjectionSite;
  /** Its first column in that output (q, k, v and gate, up sit side by side). */
  column: number;
  /** in_features. */
  inFeatures: number;
  /** out_features. */
  outFeatures: number;
  /** The base weight's Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`. */
  baseName: string;
  /** lora_A [rank, in]. */
  a: LoraTensor;
  /** lora_B [out, rank]. */
  b: LoraTensor;
}

/**
 * Every adapter matrix of a model and where it lives.
 *
 * @example
 * ```ts
 * const { count } = loraLayout(config, LORA_DEFAULTS); // trainable parameters
 * ```
 */
export interface LoraLayout {
  /** Modules in layer order, targets in {@link LORA_TARGETS} order within a layer. */
  modules: LoraModule[];
  /** All A and B tensors in buffer order. */
  tensors: LoraTensor[];
  /** Elements in each flat buffer (with alignment padding). */
  total: number;
  /** Trainable parameters (no padding). */
  count: number;
}

/**
 * Checks an adapter's settings.
 *
 * @param config The settings.
 * @throws {ConfigError} Naming the bad value and what is allowed.
 * @example
 * ```ts
 * validateLoraConfig({ rank: 0, alpha: 16, dropout: 0, targets: ["q"] }); // throws: lora_rank must be a positive integer
 * ```
 */
export function validateLoraConfig(config: LoraConfig): void {
  if (!Number.isInteger(config.rank) || config.rank < 1) {
    throw new ConfigError(`lora_rank must be a positive integer, got ${config.rank}`);
  }
  if (!(Number.isFinite(config.alpha) && config.alpha > 0)) {
    throw new ConfigError(`lora_alpha must be a positive number, got ${config.alpha}`);
  }
  if (!(config.dropout >= 0 && config.dropout < 1)) {
    throw new ConfigError(`lora_dropout must be in [0, 1), got ${config.dropout}`);
  }
  if (config.targets.length === 0) throw new ConfigError("lora_targets is empty; name at least one of q,v");
  for (const t of config.targets) {
    if (!LORA_TARGETS.includes(t)) {
      throw new ConfigError(`Unknown lora target "${t}"; choose among ${LORA_TARGETS.join(",")}`);
    }
  }
}

/**
 * Parses a comma-separated target list such as `q,v` or `q,k,v,o,gate,up,down`.
 *
 * @param text The list.
 * @returns The targets, deduplicated, in {@link LORA_TARGETS} order.
 * @throws {ConfigError} On an unknown name.
 * @example
 * ```ts
 * parseLoraTargets("v,q"); // ["q", "v"]
 * ```
 */
export function parseLoraTargets(text: string): LoraTarget[] {
  const names = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  for (const name of names) {
    if (!(LORA_TARGETS as readonly string[]).includes(name)) {
      throw new ConfigError(`Unknown lora target "${name}"; choose among ${LORA_TARGETS.join(",")}`);
    }
  }
  return LORA_TARGETS.filter((t) => names.includes(t));
}

/**
 * The scale of the low-rank update.
 *
 * @param config The settings.
 * @returns alpha / rank.
 * @example
 * ```ts
 * loraScale({ rank: 8, alpha: 16 }); // 2
 * ```
 */
export function loraScale(config: Pick<LoraConfig, "alpha" | "rank">): number {
  return config.alpha / config.rank;
}

const PEFT_MODULE: Record<LoraTarget, string> = {
  q: "self_attn.q_proj",
  k: "self_attn.k_proj",
  v: "self_attn.v_proj",
  o: "self_attn.o_proj",
  gate: "mlp.gate_proj",
  up: "mlp.up_proj",
  down: "mlp.down_proj",
};

/**
 * Where target `target` sits in a layer: its fused matmul, first output column and sizes.
 *
 * @param model The architecture.
 * @param target The projection.
 * @returns Site, column and in/out features.
 * @example
 * ```ts
 * projectionOf(config, "v"); // { site: "qkv", column: (n_head + n_kv_head)·head_size, ... }
 * ```
 */
export function projectionOf(
  model: ModelConfig,
  target: LoraTarget,
): { site: ProjectionSite; column: number; inFeatures: number; outFeatures: number } {
  const C = model.n_embd;
  const HS = headSize(model);
  const Q = model.n_head * HS;
  const KV = model.n_kv_head * HS;
  const H = model.mlp_hidden;
  switch (target) {
    case "q":
      return { site: "qkv", column: 0, inFeatures: C, outFeatures: Q };
    case "k":
      return { site: "qkv", column: Q, inFeatures: C, outFeatures: KV };
    case "v":
      return { site: "qkv", column: Q + KV, inFeatures: C, outFeatures: KV };
    case "o":
      return { site: "attnOut", column: 0, inFeatures: Q, outFeatures: C };
    case "gate":
      return { site: "gateUp", column: 0, inFeatures: C, outFeatures: H };
    case "up":
      return { site: "gateUp", column: H, inFeatures: C, outFeatures: H };
    case "down":
      return { site: "down", column: 0, inFeatures: H, outFeatures: C };
  }
}

/**
 * Lays out the adapter matrices of every layer and target in flat buffers.
 *
 * @param model The base architecture.
 * @param lora The adapter's settings.
 * @returns The layout.
 * @example
 * ```ts
 * const layout = loraLayout(config, { rank: 8, alpha: 16, dropout: 0, targets: ["q", "v"] });
 * layout.tensors[0].name; // "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
 * ```
 */
export function loraLayout(model: ModelConfig, lora: LoraConfig): LoraLayout {
  const r = lora.rank;
  const modules: LoraModule[] = [];
  const tensors: LoraTensor[] = [];
  let cursor = 0;
  const add = (name: string, shape: [number, number]): LoraTensor => {
    cursor = Math.ceil(cursor / PARAM_ALIGNMENT) * PARAM_ALIGNMENT; // matmuls bind each at an aligned offset
    const tensor = { name, shape, offset: cursor, length: shape[0] * shape[1] };
    tensors.push(tensor);
    cursor += tensor.length;
    return tensor;
  };
  const targets = LORA_TARGETS.filter((t) => lora.targets.includes(t));
  for (let layer = 0; layer < model.n_layer; layer++) {
    for (const target of targets) {
      const where = projectionOf(model, target);
      const prefix = `base_model.model.model.layers.${layer}.${PEFT_MODULE[target]}`;
      const a = add(`${prefix}.lora_A.weight`, [r, where.inFeatures]);
      const b = add(`${prefix}.lora_B.weight`, [where.outFeatures, r]);
      const baseName = `model.layers.${layer}.${PEFT_MODULE[target]}.weight`;
      modules.push({ layer, target, ...where, baseName, a, b });
    }
  }
  const total = Math.ceil(cursor / PARAM_ALIGNMENT) * PARAM_ALIGNMENT;
  return { modules, tensors, total, count: tensors.reduce((s, t) => s + t.length, 0) };
}

/**
 * PEFT's initial values: A uniform in ±1/√in_features (what
 * `kaiming_uniform_(a=√5)` draws), B zero, so the adapted model starts equal to the base.
 *
 * @param layout The adapter layout.
 * @param rng Seeded generator.
 * @returns The flat adapter values (layout.total).
 * @example
 * ```ts
 * adapters.upload(initialLoraParameters(adapters.layout, new Rng(1337)));
 * ```
 */
export function initialLoraParameters(layout: LoraLayout, rng: Rng): Float32Array {
  const values = new Float32Array(layout.total);
  for (const m of layout.modules) {
    const bound = 1 / Math.sqrt(m.inFeatures);
    const a = values.subarray(m.a.offset, m.a.offset + m.a.length);
    for (let i = 0; i < a.length; i++) a[i] = (2 * rng.uniform() - 1) * bound;
  }
  return values;
}

/**
 * Folds an adapter into a copy of the base weights: W += (alpha/rank)·B·A for
 * every module (float64 sums, rounded once to f32), which is what PEFT's
 * `merge_and_unload` computes.
 *
 * @param model The base architecture.
 * @param params The base's flat parameters (not modified).
 * @param adapter The settings and flat values of the adapter.
 * @returns Merged flat parameters in the base's layout.
 * @example
 * ```ts
 * const merged = mergeLora(checkpoint.config, checkpoint.params, await loadLoraAdapter("out-lora/adapter_model.safetensors"));
 * ```
 */
export function mergeLora(
  model: ModelConfig,
  params: Float32Array,
  adapter: { config: LoraConfig; values: Float32Array },
): Float32Array {
  const base = new Map(paramLayout(model).tensors.map((t) => [t.name, t]));
  const merged = Float32Array.from(params);
  const scale = loraScale(adapter.config);
  const r = adapter.config.rank;
  const { values } = adapter;
  for (const m of loraLayout(model, adapter.config).modules) {
    const w = base.get(m.baseName)!;
    const row = new Float64Array(m.inFeatures);
    for (let o = 0; o < m.outFeatures; o++) {
      row.fill(0);
      for (let k = 0; k < r; k++) {
        const bk = values[m.b.offset + o * r + k];
        if (bk === 0) continue;
        const aRow = m.a.offset + k * m.inFeatures;
        for (let i = 0; i < m.inFeatures; i++) row[i] += bk * values[aRow + i];
      }
      const wRow = w.offset + o * m.inFeatures;
      for (let i = 0; i < m.inFeatures; i++) merged[wRow + i] = merged[wRow + i] + scale * row[i];
    }
  }
  return merged;
}
