/**
 * `--init_from hf:DIR`: a local Hugging Face LLaMA folder as config, weights and
 * tokenizer, ready to sample from ({@link Generator} takes it as it is) or to
 * train further ({@link Trainer.create} takes it as the checkpoint to start from).
 *
 * @module
 */

import { ConfigError } from "./config.ts";
import { DataError } from "./errors.ts";
import { type HfWeights, loadHfWeights } from "./hf_import.ts";
import { HfTokenizer } from "./hf_tokenizer.ts";
import { loadTokenizer, type Tokenizer, type TokenizerName } from "./tokenizer.ts";

/** The prefix of an `init_from` value that names a Hugging Face folder. */
export const HF_PREFIX = "hf:";

/** A Hugging Face model with the tokenizer to run it with. */
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
  const weights = await loadHfWeights(dir);
  if (options.tokenizer === "char") {
    throw new DataError("--tokenizer char needs a dataset's character list; pick a byte-pair vocabulary");
  }
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
