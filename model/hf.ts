/**
 * `--init_from hf:DIR`: a local Hugging Face LLaMA folder as config, weights and
 * tokenizer, ready to sample from ({@link Generator} takes it as it is) or to
 * train further ({@link Trainer.create} takes it as the checkpoint to start from).
 *
 * @module
 */

import type { Checkpoint } from "./checkpoint.ts";
import { ConfigError } from "./config.ts";
import { DataError } from "./errors.ts";
import { type HfWeights, loadHfWeights } from "./hf_import.ts";
import { HfTokenizer } from "./hf_tokenizer.ts";
import type { DatasetMeta, TokenArray } from "./meta.ts";
import { loadTokenizer, type Tokenizer, tokenizerFromMeta, type TokenizerName } from "./tokenizer.ts";

/**
 * The prefix of an `init_from` value that names a Hugging Face folder.
 *
 * @example
 * ```ts
 * `${HF_PREFIX}models/tiny-llama`; // "hf:models/tiny-llama"
 * ```
 */
export const HF_PREFIX = "hf:";

/**
 * A Hugging Face model with the tokenizer to run it with.
 *
 * @example
 * ```ts
 * const model: HfModel = await loadHfModel("models/tiny-llama");
 * model.tokenizer.encode("Hello");
 * ```
 */
export interface HfModel extends HfWeights {
  /** tokenizer.json's byte-level BPE ({@link HfTokenizer}), or the named tokenizer given instead. */
  tokenizer: Tokenizer;
}

/**
 * The folder of an `init_from` value.
 *
 * @param initFrom E.g. `hf:models/tiny`, `scratch`, `resume`.
 * @returns The folder for `hf:DIR`, else null.
 * @throws {ConfigError} For `hf:` with no folder.
 * @example
 * ```ts
 * hfInitDir("hf:models/tiny"); // "models/tiny"
 * hfInitDir("resume"); // null
 * ```
 */
export function hfInitDir(initFrom: string): string | null {
  if (!initFrom.startsWith(HF_PREFIX)) return null;
  const dir = initFrom.slice(HF_PREFIX.length);
  if (!dir) throw new ConfigError('init_from "hf:" names no folder; write --init_from hf:PATH/TO/MODEL');
  return dir;
}

/**
 * Loads a local Hugging Face LLaMA folder: config.json, safetensors weights
 * (single or sharded; f32, f16 or bf16, converted to f32) and its tokenizer.
 *
 * @param dir The folder.
 * @param options `tokenizer`: one of our tokenizers to use instead of tokenizer.json.
 * @returns Config, flat f32 parameters, eos id and tokenizer.
 * @throws {ConfigError|DataError|SafetensorsError} One line naming the file and the problem.
 * @example
 * ```ts
 * const model = await loadHfModel("models/tiny-llama");
 * const generator = new Generator(gpu, model, { batchSize: 1 });
 * const prompt = model.tokenizer.encode("Once upon a time");
 * ```
 */
export async function loadHfModel(
  dir: string,
  options: { tokenizer?: TokenizerName } = {},
): Promise<HfModel> {
  if (options.tokenizer === "char") {
    throw new DataError("--tokenizer char needs a dataset's character list; pick a byte-pair vocabulary");
  }
  const weights = await loadHfWeights(dir);
  const tokenizer = options.tokenizer
    ? await loadTokenizer(options.tokenizer)
    : await HfTokenizer.load(dir, weights.eosTokenId);
  if (tokenizer.vocabSize > weights.config.vocab_size) {
    throw new DataError(
      `The ${tokenizer.name} tokenizer has ${tokenizer.vocabSize} ids but the model in ${dir} only ` +
        `${weights.config.vocab_size}; this is not the model's tokenizer`,
    );
  }
  return { ...weights, tokenizer };
}

// prepare tokenizes with our vocabularies only, so a model with another one cannot be trained on yet.
const PREPARE_HINT = "prepare the data with the model's vocabulary (deno task prepare --tokenizer gpt2, " +
  "cl100k_base or o200k_base, whichever it uses)";

/** Tokens of the dataset decoded to compare the two vocabularies: enough to cover common tokens. */
const PROBE_TOKENS = 256;

/**
 * The starting point for training on a dataset from a Hugging Face folder: its
 * weights as a checkpoint without optimizer state, block_size and dropout from
 * the run's settings (RoPE has no learned positions, so any block up to
 * max_position_embeddings works). The dataset must speak the model's vocabulary:
 * when the folder has a byte-level BPE tokenizer.json, the start of val.bin is
 * decoded by it and by the dataset's tokenizer, and the texts must agree.
 *
 * @param dir The Hugging Face folder.
 * @param data The dataset's meta.json and val.bin.
 * @param settings block_size and dropout for the run.
 * @returns The checkpoint to hand {@link Trainer.create}, and a note when the tokenizers could not be compared.
 * @throws {ConfigError} When block_size is too long or the dataset uses another vocabulary.
 * @example
 * ```ts
 * const { checkpoint } = await hfTrainingStart("models/tiny", { meta, val }, { block_size: 256, dropout: 0 });
 * const trainer = Trainer.create(gpu, config, checkpoint.config, { train, val, meta }, checkpoint);
 * ```
 */
export async function hfTrainingStart(
  dir: string,
  data: { meta: DatasetMeta; val: TokenArray },
  settings: { block_size: number; dropout: number },
): Promise<{ checkpoint: Checkpoint; note: string | null }> {
  const weights = await loadHfWeights(dir);
  const longest = weights.config.block_size;
  if (settings.block_size > longest) {
    throw new ConfigError(
      `block_size ${settings.block_size} exceeds the max_position_embeddings ${longest} of ${dir}; ` +
        `lower --block_size`,
    );
  }
  if (data.meta.vocab_size > weights.config.vocab_size) {
    throw new ConfigError(
      `The dataset's vocabulary of ${data.meta.vocab_size} (${data.meta.tokenizer}) is larger than the ` +
        `${weights.config.vocab_size} of ${dir}; ${PREPARE_HINT}`,
    );
  }
  let note: string | null = null;
  try {
    await checkDatasetVocabulary(
      await HfTokenizer.load(dir, weights.eosTokenId),
      data,
      `${dir}/tokenizer.json`,
    );
  } catch (error) {
    if (!(error instanceof DataError)) throw error;
    note = `the dataset's ${data.meta.tokenizer} tokenizer could not be checked against the model's ` +
      `(${error.message.split(";")[0]}); make sure the data uses the model's vocabulary`;
  }
  const config = { ...weights.config, block_size: settings.block_size, dropout: settings.dropout };
  return { checkpoint: { config, tokenizer: data.meta, params: weights.params }, note };
}

/**
 * Refuses a prepared dataset whose token ids mean other text to the model's
 * tokenizer: the start of val.bin is decoded by both and must read the same.
 *
 * @param model The model's tokenizer (a Hugging Face folder's tokenizer.json, say).
 * @param data The dataset's meta.json and val.bin.
 * @param where Names the model's tokenizer in the message.
 * @throws {ConfigError} When the two decodings differ.
 * @throws {DataError} When the dataset's own tokenizer cannot be loaded.
 * @example
 * ```ts
 * await checkDatasetVocabulary(model.tokenizer, { meta, val }, "models/tiny/tokenizer.json");
 * ```
 */
export async function checkDatasetVocabulary(
  model: Tokenizer,
  data: { meta: DatasetMeta; val: TokenArray },
  where: string,
): Promise<void> {
  const ours = await tokenizerFromMeta(data.meta);
  const probe = Array.from(data.val.subarray(0, PROBE_TOKENS));
  const decode = (tokenizer: Tokenizer) => {
    try {
      return tokenizer.decode(probe);
    } catch {
      return null; // an id outside this vocabulary
    }
  };
  const text = decode(ours);
  if (text === null || decode(model) !== text) {
    throw new ConfigError(
      `The dataset's ${data.meta.tokenizer} token ids mean other text to ${where}; ${PREPARE_HINT}`,
    );
  }
}
