/**
 * Loads a local Hugging Face LLaMA-architecture folder: config.json, and the
 * weights in one model.safetensors or in shards listed by
 * model.safetensors.index.json, stored as F32, F16 or BF16 (converted to f32).
 * Every tensor's name and shape is checked against the layout the config
 * implies before any data is read; a tensor we would not use (a bias, say) is
 * refused by name rather than silently dropped.
 *
 * @module
 */

import { basename, join } from "node:path";
import { ConfigError, type ModelConfig } from "./config.ts";
import { HF_FILES } from "./hf_export.ts";
import { modelConfigFromHf } from "./hf_config.ts";
import { paramLayout } from "./params.ts";
import {
  openSafetensors,
  readSafetensorsHeader,
  readTensorBytes,
  SafetensorsError,
  type SafetensorsHeader,
  toFloat32,
} from "./safetensors.ts";

/**
 * A Hugging Face model's architecture and weights in our flat layout.
 *
 * @example
 * ```ts
 * const { config, params }: HfWeights = await loadHfWeights("models/tiny-llama");
 * const model = new Llama(gpu, config, { batchSize: 1, training: false });
 * model.upload(params);
 * ```
 */
export interface HfWeights {
  /** The architecture (dropout 0, block_size = max_position_embeddings). */
  config: ModelConfig;
  /** Flat f32 parameters in `paramLayout(config)`. */
  params: Float32Array;
  /** eos_token_id from config.json or generation_config.json, when it is one integer. */
  eosTokenId: number | null;
}

// Buffers HF computes from the config rather than learns; old exports still store them.
const DERIVED_TENSOR = /\.rotary_emb\.inv_freq$/;

/**
 * Reads a Hugging Face folder's config and weights.
 *
 * @param dir The folder (config.json and model.safetensors or model.safetensors.index.json).
 * @returns Config, flat parameters and the eos id.
 * @throws {ConfigError} For a missing or unsupported config; {@link SafetensorsError} for bad weights.
 * @example
 * ```ts
 * const { config, params } = await loadHfWeights("models/tiny-llama");
 * ```
 */
export async function loadHfWeights(dir: string): Promise<HfWeights> {
  const configPath = join(dir, HF_FILES.config);
  const json = await readJson(configPath, `a Hugging Face model folder needs ${HF_FILES.config}`);
  const config = modelConfigFromHf(json, configPath);
  const files = await weightFiles(dir);
  // Every header is read and checked against config.json before the parameters are allocated, so a crafted
  // config cannot make us build a billion-layer layout or allocate gigabytes.
  const opened: { path: string; file: Deno.FsFile; header: SafetensorsHeader; names: string[] | null }[] = [];
  try {
    for (const [path, names] of files) {
      const file = await openSafetensors(path, "it is listed in the index but missing");
      opened.push({ path, file, header: await readSafetensorsHeader(file, path), names });
    }
    const stored = opened.reduce((count, { header }) => count + header.tensors.size, 0);
    if (config.n_layer > stored) {
      throw new SafetensorsError(
        dir,
        `config.json declares ${config.n_layer} layers but the weights hold ${stored} tensors`,
      );
    }
    const layout = paramLayout(config);
    const wanted = new Map(layout.tensors.map((t) => [t.name, t]));
    const reads: {
      path: string;
      file: Deno.FsFile;
      header: SafetensorsHeader;
      name: string;
      offset: number;
    }[] = [];
    for (const { path, file, header, names } of opened) {
      for (const name of names ?? header.tensors.keys()) {
        const info = header.tensors.get(name);
        if (!info) throw new SafetensorsError(path, `lacks tensor "${name}" that the index places in it`);
        if (DERIVED_TENSOR.test(name)) continue;
        if (name === "lm_head.weight" && config.tie_embeddings) continue; // transformers ties it to the embedding
        const tensor = wanted.get(name);
        if (!tensor) {
          throw new SafetensorsError(
            path,
            `has tensor "${name}", which a LLaMA model without biases has no place for`,
          );
        }
        if (info.shape.join(",") !== tensor.shape.join(",")) {
          throw new SafetensorsError(
            path,
            `tensor "${name}" has shape [${info.shape}], but config.json implies [${tensor.shape}]`,
          );
        }
        if (info.dtype !== "F32" && info.dtype !== "F16" && info.dtype !== "BF16") {
          throw new SafetensorsError(path, `tensor "${name}" is ${info.dtype}; expected F32, F16 or BF16`);
        }
        reads.push({ path, file, header, name, offset: tensor.offset });
      }
    }
    const found = new Set(reads.map((r) => r.name));
    const missing = layout.tensors.find((t) => !found.has(t.name));
    if (missing) {
      throw new SafetensorsError(dir, `has no tensor "${missing.name}", which its config.json implies`);
    }
    const params = new Float32Array(layout.total);
    for (const { path, file, header, name, offset } of reads) {
      params.set(
        toFloat32(await readTensorBytes(file, header, name, path), header.tensors.get(name)!.dtype),
        offset,
      );
    }
    return { config, params, eosTokenId: await eosTokenId(dir, json) };
  } finally {
    for (const { file } of opened) file.close();
  }
}

/** Each weight file with the tensor names to take from it (null: all of them). */
async function weightFiles(dir: string): Promise<[string, string[] | null][]> {
  // transformers' order: a single file wins over an index.
  const single = join(dir, HF_FILES.weights);
  const indexPath = join(dir, HF_FILES.index);
  if (await exists(single)) return [[single, null]];
  if (!await exists(indexPath)) {
    throw new SafetensorsError(
      dir,
      `has neither ${HF_FILES.weights} nor ${HF_FILES.index}; only safetensors weights can be loaded ` +
        "(convert .bin/.pth weights with transformers' save_pretrained(safe_serialization=True))",
    );
  }
  const index = await readJson(indexPath, "");
  const map = (index as { weight_map?: unknown })?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    throw new SafetensorsError(indexPath, 'has no "weight_map" object');
  }
  const byFile = new Map<string, string[]>();
  for (const [name, file] of Object.entries(map)) {
    // A shard is a file in this folder: a name with a path in it could point anywhere.
    if (typeof file !== "string" || file !== basename(file) || file === "..") {
      throw new SafetensorsError(indexPath, `maps "${name}" to ${JSON.stringify(file)}, not a file name`);
    }
    byFile.set(file, [...byFile.get(file) ?? [], name]);
  }
  return [...byFile].map(([file, names]) => [join(dir, file), names]);
}

/** The eos id as generation uses it: generation_config.json first, then config.json. */
async function eosTokenId(dir: string, config: unknown): Promise<number | null> {
  const generationPath = join(dir, HF_FILES.generation);
  const generation = await exists(generationPath) ? await readJson(generationPath, "") : {};
  for (const source of [generation, config]) {
    const id = (source as { eos_token_id?: unknown })?.eos_token_id;
    if (Number.isInteger(id)) return id as number;
    if (Array.isArray(id) && Number.isInteger(id[0])) return id[0];
  }
  return null;
}

async function readJson(path: string, hint: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new ConfigError(`"${path}" not found${hint ? `; ${hint}` : ""}`);
    }
    throw error;
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new ConfigError(`"${path}" is not valid JSON`);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}
