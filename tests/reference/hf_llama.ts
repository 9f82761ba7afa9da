/**
 * Float64 reference of transformers' `LlamaForCausalLM` forward (modeling_llama.py),
 * written from the Hugging Face code rather than from our model: it reads the
 * config.json fields and the tensors by their Hugging Face names, [out, in] each,
 * so an export is checked against what transformers computes, not against our
 * own layout. No part of model/ is imported.
 *
 * - LlamaRMSNorm: x · rsqrt(mean(x²) + eps) · weight
 * - rotary: inv_freq = 1 / theta^(arange(0, HS, 2) / HS), cos/sin = cat(freqs, freqs),
 *   q·cos + rotate_half(q)·sin with rotate_half(x) = cat(−x₂, x₁)
 * - repeat_kv: query head h reads key/value head ⌊h / (NH/NKV)⌋
 * - causal softmax(q·kᵀ / √HS), o_proj; MLP down(silu(gate(x)) · up(x))
 * - lm_head = embed_tokens when tie_word_embeddings
 *
 * @module
 */

/** A tensor as read from model.safetensors. */
export interface HfTensor {
  /** Shape, [out_features, in_features] for matrices. */
  shape: number[];
  /** Values. */
  data: Float64Array;
}

/** The config.json fields the forward reads. */
export interface HfForwardConfig {
  /** C. */
  hidden_size: number;
  /** H. */
  intermediate_size: number;
  /** L. */
  num_hidden_layers: number;
  /** NH. */
  num_attention_heads: number;
  /** NKV. */
  num_key_value_heads: number;
  /** RMSNorm epsilon. */
  rms_norm_eps: number;
  /** RoPE base. */
  rope_theta: number;
  /** V. */
  vocab_size: number;
  /** lm_head is embed_tokens. */
  tie_word_embeddings: boolean;
}

/** y = x · Wᵀ for x (N, in), W (out, in). */
function linear(x: Float64Array, w: HfTensor): Float64Array {
  const [out, inputs] = w.shape;
  const n = x.length / inputs;
  const y = new Float64Array(n * out);
  for (let r = 0; r < n; r++) {
    for (let o = 0; o < out; o++) {
      let sum = 0;
      for (let i = 0; i < inputs; i++) sum += x[r * inputs + i] * w.data[o * inputs + i];
      y[r * out + o] = sum;
    }
  }
  return y;
}

function rmsnorm(x: Float64Array, w: HfTensor, eps: number): Float64Array {
  const C = w.shape[0];
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / C; r++) {
    let squares = 0;
    for (let i = 0; i < C; i++) squares += x[r * C + i] ** 2;
    const inv = 1 / Math.sqrt(squares / C + eps);
    for (let i = 0; i < C; i++) y[r * C + i] = x[r * C + i] * inv * w.data[i];
  }
  return y;
}

/** Applies rotary embedding in place to (T, heads·HS) laid out row by row. */
function rotate(x: Float64Array, T: number, heads: number, HS: number, theta: number): void {
  const half = HS / 2;
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * HS;
      const head = x.slice(base, base + HS);
      for (let d = 0; d < HS; d++) {
        const freq = t / theta ** ((2 * (d % half)) / HS); // cat(freqs, freqs)
        const rotated = d < half ? -head[d + half] : head[d - half]; // rotate_half
        x[base + d] = head[d] * Math.cos(freq) + rotated * Math.sin(freq);
      }
    }
  }
}

/**
 * Logits of one sequence.
 *
 * @param config The config.json fields.
 * @param tensors Tensors by Hugging Face name.
 * @param tokens Token ids of the sequence.
 * @returns Logits (T, V).
 */
export function hfLlamaLogits(
  config: HfForwardConfig,
  tensors: ReadonlyMap<string, HfTensor>,
  tokens: ArrayLike<number>,
): Float64Array {
  const get = (name: string) => {
    const tensor = tensors.get(name);
    if (!tensor) throw new Error(`missing tensor ${name}`);
    return tensor;
  };
  const T = tokens.length;
  const C = config.hidden_size;
  const NH = config.num_attention_heads;
  const NKV = config.num_key_value_heads;
  const HS = C / NH;
  const embed = get("model.embed_tokens.weight");
  let x = new Float64Array(T * C);
  for (let t = 0; t < T; t++) x.set(embed.data.subarray(tokens[t] * C, (tokens[t] + 1) * C), t * C);

  for (let l = 0; l < config.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    const h = rmsnorm(x, get(`${p}.input_layernorm.weight`), config.rms_norm_eps);
    const q = linear(h, get(`${p}.self_attn.q_proj.weight`));
    const k = linear(h, get(`${p}.self_attn.k_proj.weight`));
    const v = linear(h, get(`${p}.self_attn.v_proj.weight`));
    rotate(q, T, NH, HS, config.rope_theta);
    rotate(k, T, NKV, HS, config.rope_theta);
    const attn = new Float64Array(T * NH * HS);
    for (let head = 0; head < NH; head++) {
      const kvHead = Math.floor(head / (NH / NKV));
      for (let t = 0; t < T; t++) {
        const scores = new Float64Array(t + 1);
        for (let s = 0; s <= t; s++) {
          let dot = 0;
          for (let d = 0; d < HS; d++) dot += q[(t * NH + head) * HS + d] * k[(s * NKV + kvHead) * HS + d];
          scores[s] = dot / Math.sqrt(HS);
        }
        const max = Math.max(...scores);
        const weights = scores.map((score) => Math.exp(score - max));
        const total = weights.reduce((a, b) => a + b, 0);
        for (let s = 0; s <= t; s++) {
          for (let d = 0; d < HS; d++) {
            attn[(t * NH + head) * HS + d] += (weights[s] / total) * v[(s * NKV + kvHead) * HS + d];
          }
        }
      }
    }
    const o = linear(attn, get(`${p}.self_attn.o_proj.weight`));
    x = x.map((value, i) => value + o[i]);

    const h2 = rmsnorm(x, get(`${p}.post_attention_layernorm.weight`), config.rms_norm_eps);
    const gate = linear(h2, get(`${p}.mlp.gate_proj.weight`));
    const up = linear(h2, get(`${p}.mlp.up_proj.weight`));
    const hidden = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]);
    const down = linear(hidden, get(`${p}.mlp.down_proj.weight`));
    x = x.map((value, i) => value + down[i]);
  }
  const final = rmsnorm(x, get("model.norm.weight"), config.rms_norm_eps);
  return linear(final, config.tie_word_embeddings ? embed : get("lm_head.weight"));
}
