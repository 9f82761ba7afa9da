/**
 * Our model config as a Hugging Face `LlamaConfig` (config.json) and back. Only
 * what our model computes is accepted on the way in: SiLU, no biases, no RoPE
 * scaling, head_dim = hidden_size / num_attention_heads. Anything else is refused
 * with the field named, rather than loaded into a model that computes something else.
 *
 * @module
 */

import { ConfigError, headSize, type ModelConfig, resolveModelConfig } from "./config.ts";

/**
 * The config.json fields we write (a subset of transformers' `LlamaConfig`).
 *
 * @example
 * ```ts
 * const json: HfLlamaConfig = hfConfig(config, null);
 * await Deno.writeTextFile("out/hf/config.json", JSON.stringify(json));
 * ```
 */
export interface HfLlamaConfig {
  /** `["LlamaForCausalLM"]`. */
  architectures: string[];
  /** `"llama"`. */
  model_type: string;
  /** n_embd. */
  hidden_size: number;
  /** mlp_hidden. */
  intermediate_size: number;
  /** n_layer. */
  num_hidden_layers: number;
  /** n_head. */
  num_attention_heads: number;
  /** n_kv_head. */
  num_key_value_heads: number;
  /** n_embd / n_head. */
  head_dim: number;
  /** block_size. */
  max_position_embeddings: number;
  /** norm_eps. */
  rms_norm_eps: number;
  /** rope_theta. */
  rope_theta: number;
  /** vocab_size. */
  vocab_size: number;
  /** tie_embeddings. */
  tie_word_embeddings: boolean;
  /** Element type of the stored weights. */
  torch_dtype: "float32" | "float16" | "bfloat16";
  /** `"silu"`: SwiGLU's gate. */
  hidden_act: string;
  /** No biases in q/k/v/o. */
  attention_bias: boolean;
  /** No biases in the MLP. */
  mlp_bias: boolean;
  /** Attention dropout (we apply none at inference). */
  attention_dropout: number;
  /** No RoPE scaling. */
  rope_scaling: null;
  /** Std of the initialisation, as our init uses. */
  initializer_range: number;
  /** Generation uses the KV cache. */
  use_cache: boolean;
  /** The end-of-text id, when the vocabulary has one. */
  bos_token_id?: number;
  /** The end-of-text id, when the vocabulary has one. */
  eos_token_id?: number;
}

/**
 * The config.json of a model.
 *
 * @param config Our model config.
 * @param eotId The vocabulary's end-of-text id (written as bos and eos), or null.
 * @param torchDtype How the weights are stored.
 * @returns The `LlamaForCausalLM` config.
 * @example
 * ```ts
 * const json = hfConfig(checkpoint.config, checkpoint.tokenizer.eot_id);
 * json.hidden_size === checkpoint.config.n_embd; // true
 * ```
 */
export function hfConfig(
  config: ModelConfig,
  eotId: number | null,
  torchDtype: HfLlamaConfig["torch_dtype"] = "float32",
): HfLlamaConfig {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: config.n_embd,
    intermediate_size: config.mlp_hidden,
    num_hidden_layers: config.n_layer,
    num_attention_heads: config.n_head,
    num_key_value_heads: config.n_kv_head,
    head_dim: headSize(config),
    max_position_embeddings: config.block_size,
    rms_norm_eps: config.norm_eps,
    rope_theta: config.rope_theta,
    vocab_size: config.vocab_size,
    tie_word_embeddings: config.tie_embeddings,
    torch_dtype: torchDtype,
    hidden_act: "silu",
    attention_bias: false,
    mlp_bias: false,
    attention_dropout: 0,
    rope_scaling: null,
    initializer_range: 0.02,
    use_cache: true,
    ...(eotId === null ? {} : { bos_token_id: eotId, eos_token_id: eotId }),
  };
}

/**
 * Our model config from a config.json, with transformers' `LlamaConfig`
 * defaults for absent fields (num_key_value_heads = num_attention_heads,
 * rms_norm_eps 1e-6, rope_theta 10000, tie_word_embeddings false).
 *
 * @param json The parsed config.json.
 * @param where The file, for messages.
 * @returns The model config (dropout 0).
 * @throws {ConfigError} Naming the unsupported or missing field.
 * @example
 * ```ts
 * const config = modelConfigFromHf(JSON.parse(await Deno.readTextFile("m/config.json")), "m/config.json");
 * ```
 */
export function modelConfigFromHf(json: unknown, where: string): ModelConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError(`${where} is not a JSON object`);
  }
  const hf = json as Record<string, unknown>;
  const refuse = (what: string) =>
    new ConfigError(`${where} ${what}; only LLaMA-architecture models (LlamaForCausalLM) can be loaded`);
  const architectures = Array.isArray(hf.architectures) ? hf.architectures : [];
  if (hf.model_type !== "llama" && !architectures.includes("LlamaForCausalLM")) {
    throw refuse(`describes a ${JSON.stringify(hf.model_type ?? architectures[0] ?? "unknown")} model`);
  }
  if ((hf.hidden_act ?? "silu") !== "silu") throw refuse(`has hidden_act ${JSON.stringify(hf.hidden_act)}`);
  if (hf.attention_bias === true || hf.mlp_bias === true) throw refuse("has biases");
  if (hf.rope_scaling !== undefined && hf.rope_scaling !== null) {
    throw refuse(`has rope_scaling ${JSON.stringify(hf.rope_scaling)}, which we do not implement`);
  }
  const number = (key: string, fallback?: number): number => {
    const value = hf[key] ?? fallback;
    if (typeof value !== "number") {
      throw new ConfigError(`${where} lacks a numeric ${key} (got ${JSON.stringify(hf[key])})`);
    }
    return value;
  };
  const nHead = number("num_attention_heads");
  const nEmbd = number("hidden_size");
  if (hf.head_dim !== undefined && hf.head_dim !== null && hf.head_dim !== nEmbd / nHead) {
    throw refuse(`has head_dim ${hf.head_dim}, not hidden_size / num_attention_heads = ${nEmbd / nHead}`);
  }
  const tie = hf.tie_word_embeddings ?? false;
  if (typeof tie !== "boolean") {
    throw new ConfigError(`${where} has tie_word_embeddings ${JSON.stringify(tie)}; expected true or false`);
  }
  try {
    return resolveModelConfig({
      n_layer: number("num_hidden_layers"),
      n_head: nHead,
      n_kv_head: number("num_key_value_heads", nHead),
      n_embd: nEmbd,
      block_size: number("max_position_embeddings", 2048),
      vocab_size: number("vocab_size"),
      mlp_hidden: number("intermediate_size"),
      rope_theta: number("rope_theta", 10000),
      norm_eps: number("rms_norm_eps", 1e-6),
      tie_embeddings: tie,
      dropout: 0,
    });
  } catch (error) {
    throw new ConfigError(`${where}: ${(error as Error).message}`);
  }
}
