/**
 * Adapter files: a small safetensors file with PEFT's tensor names
 * (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, f32,
 * A [r, in], B [out, r]) and, in the header's `__metadata__`, the adapter's
 * settings, PEFT's `adapter_config.json` content, the base architecture and a
 * SHA-256 of the base weights. An adapter only makes sense on the weights it
 * was trained against, so applying it to other weights is refused.
 *
 * @module
 */

import { ConfigError, MODEL_KEYS, type ModelConfig } from "./config.ts";
import { LORA_TARGETS, type LoraConfig, loraLayout, mergeLora, validateLoraConfig } from "./lora.ts";
import {
  openSafetensors,
  readSafetensorsHeader,
  readTensorBytes,
  SafetensorsError,
  toFloat32,
  writeSafetensors,
} from "./safetensors.ts";

/**
 * An adapter as stored.
 *
 * @example
 * ```ts
 * const { config, values } = await loadLoraAdapter("out-lora/adapter_model.safetensors");
 * ```
 */
export interface LoraAdapterFile {
  /** Rank, alpha, dropout, targets. */
  config: LoraConfig;
  /** The base architecture it fits. */
  base: ModelConfig;
  /** SHA-256 (hex) of the base weights, see {@link baseWeightsHash}. */
  baseHash: string;
  /** Flat A and B values in `loraLayout(base, config)`. */
  values: Float32Array;
}

const PEFT_NAMES: Record<string, string> = {
  q: "q_proj",
  k: "k_proj",
  v: "v_proj",
  o: "o_proj",
  gate: "gate_proj",
  up: "up_proj",
  down: "down_proj",
};

/**
 * PEFT's `adapter_config.json` for these settings, so a folder holding it and
 * `adapter_model.safetensors` loads with `PeftModel.from_pretrained` (on a base
 * exported with `deno task export`).
 *
 * @param config The adapter's settings.
 * @returns The JSON object.
 * @example
 * ```ts
 * peftAdapterConfig(LORA_DEFAULTS).target_modules; // ["q_proj", "v_proj"]
 * ```
 */
export function peftAdapterConfig(config: LoraConfig): {
  peft_type: string;
  task_type: string;
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  target_modules: string[];
  bias: string;
  fan_in_fan_out: boolean;
} {
  return {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    r: config.rank,
    lora_alpha: config.alpha,
    lora_dropout: config.dropout,
    target_modules: config.targets.map((t) => PEFT_NAMES[t]),
    bias: "none",
    fan_in_fan_out: false,
  };
}

/**
 * A fingerprint of a base model: SHA-256 over its config and its flat f32 weights.
 * Two checkpoints with the same weights (with or without optimizer state) agree.
 *
 * @param base The architecture and flat parameters.
 * @returns Lower-case hex.
 * @example
 * ```ts
 * const hash = await baseWeightsHash(await loadCheckpoint("out/ckpt.safetensors"));
 * ```
 */
export async function baseWeightsHash(base: { config: ModelConfig; params: Float32Array }): Promise<string> {
  const config = new TextEncoder().encode(JSON.stringify(MODEL_KEYS.map((k) => base.config[k])));
  const weights = new Uint8Array(base.params.buffer, base.params.byteOffset, base.params.byteLength);
  const all = new Uint8Array(config.length + weights.length);
  all.set(config);
  all.set(weights, config.length);
  const digest = await crypto.subtle.digest("SHA-256", all);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Writes an adapter atomically (temporary file, then rename).
 *
 * @param path Destination, e.g. `out-lora/adapter_model.safetensors`.
 * @param adapter Settings, base architecture and hash, values.
 * @example
 * ```ts
 * await saveLoraAdapter("out-lora/adapter_model.safetensors", await trainer.adapter());
 * ```
 */
export async function saveLoraAdapter(path: string, adapter: LoraAdapterFile): Promise<void> {
  const layout = loraLayout(adapter.base, adapter.config);
  const tensors = layout.tensors.map((t) => ({
    name: t.name,
    dtype: "F32" as const,
    shape: t.shape,
    data: adapter.values.subarray(t.offset, t.offset + t.length),
  }));
  await writeSafetensors(path, tensors, {
    format: "pt",
    lora: JSON.stringify(adapter.config),
    adapter_config: JSON.stringify(peftAdapterConfig(adapter.config)),
    base_config: JSON.stringify(adapter.base),
    base_sha256: adapter.baseHash,
  });
}

/**
 * Reads and validates an adapter: its metadata, then every tensor's name and
 * shape against the layout its settings imply, then the data.
 *
 * @param path The adapter file.
 * @returns The adapter.
 * @throws {SafetensorsError} Naming the file and the problem.
 * @example
 * ```ts
 * const adapter = await loadLoraAdapter("out-lora/adapter_model.safetensors");
 * ```
 */
export async function loadLoraAdapter(path: string): Promise<LoraAdapterFile> {
  const file = await openSafetensors(path, "train an adapter first with deno task finetune");
  try {
    const header = await readSafetensorsHeader(file, path);
    const { metadata } = header;
    if (!metadata.lora || !metadata.base_config || !metadata.base_sha256) {
      throw new SafetensorsError(
        path,
        "is not a LoRA adapter written by deno task finetune (no lora metadata)",
      );
    }
    let config: LoraConfig;
    let base: ModelConfig;
    try {
      config = JSON.parse(metadata.lora);
      base = JSON.parse(metadata.base_config);
      validateLoraConfig(config);
      for (const key of MODEL_KEYS) if (!(key in base)) throw new ConfigError(`the base config lacks ${key}`);
      if (!config.targets.every((t) => LORA_TARGETS.includes(t))) throw new ConfigError("unknown target");
    } catch (error) {
      throw new SafetensorsError(path, `has invalid adapter metadata: ${(error as Error).message}`);
    }
    const layout = loraLayout(base, config);
    for (const t of layout.tensors) {
      const info = header.tensors.get(t.name);
      if (!info) throw new SafetensorsError(path, `lacks tensor "${t.name}" that its settings imply`);
      if (info.shape.join(",") !== t.shape.join(",")) {
        throw new SafetensorsError(
          path,
          `tensor "${t.name}" has shape [${info.shape}], expected [${t.shape}]`,
        );
      }
    }
    const values = new Float32Array(layout.total);
    for (const t of layout.tensors) {
      const info = header.tensors.get(t.name)!;
      values.set(toFloat32(await readTensorBytes(file, header, t.name, path), info.dtype), t.offset);
    }
    return { config, base, baseHash: metadata.base_sha256, values };
  } finally {
    file.close();
  }
}

/**
 * Refuses an adapter whose base is not `base`: a different architecture, or
 * different weights (by {@link baseWeightsHash}).
 *
 * @param adapter The loaded adapter, and its file name for the message.
 * @param base The weights to apply it to, and their file name.
 * @throws {ConfigError} Saying which base the adapter needs.
 * @example
 * ```ts
 * await checkAdapterBase({ ...adapter, path: "a.safetensors" }, { ...checkpoint, path: "out/ckpt.safetensors" });
 * ```
 */
export async function checkAdapterBase(
  adapter: LoraAdapterFile & { path: string },
  base: { config: ModelConfig; params: Float32Array; path: string },
): Promise<void> {
  const differing = MODEL_KEYS.filter((k) => adapter.base[k] !== base.config[k]);
  if (differing.length > 0) {
    const k = differing[0];
    throw new ConfigError(
      `Adapter ${adapter.path} was trained on a model with ${k}=${adapter.base[k]}, but ${base.path} has ` +
        `${k}=${base.config[k]}; apply it to the checkpoint it was fine-tuned from`,
    );
  }
  const hash = await baseWeightsHash(base);
  if (hash !== adapter.baseHash) {
    throw new ConfigError(
      `Adapter ${adapter.path} was trained on other weights (base sha256 ${
        adapter.baseHash.slice(0, 12)
      }…) ` +
        `than ${base.path} (${hash.slice(0, 12)}…); apply it to the checkpoint it was fine-tuned from`,
    );
  }
}

/**
 * Loads an adapter file, checks it belongs to `base`, and returns the base's
 * weights with the adapter merged in (what `deno task sample --lora` runs: a
 * merged model decodes at the base's speed).
 *
 * @param path The adapter file.
 * @param base The base's architecture and weights, and where they came from (for messages).
 * @returns Merged flat parameters.
 * @example
 * ```ts
 * const base = await loadCheckpoint("out/ckpt.safetensors");
 * base.params = await mergeAdapterFile("out-lora/adapter_model.safetensors", { ...base, path: "out/ckpt.safetensors" });
 * ```
 */
export async function mergeAdapterFile(
  path: string,
  base: { config: ModelConfig; params: Float32Array; path: string },
): Promise<Float32Array> {
  const adapter = await loadLoraAdapter(path);
  await checkAdapterBase({ ...adapter, path }, base);
  return mergeLora(base.config, base.params, adapter);
}
