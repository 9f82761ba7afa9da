/**
 * Text in, text out: encodes a prompt, generates with a {@link Generator}, and
 * streams each sample's new text as it is produced. Byte-level tokenizers can
 * end a token in the middle of a character; that partial character is held back
 * until the token that completes it arrives, so streamed text never shows U+FFFD
 * that the final text would not.
 *
 * @module
 */

import { ConfigError } from "./config.ts";
import type { Generator } from "./generate.ts";
import { Rng } from "./rng.ts";
import type { SamplingOptions } from "./sampling.ts";
import type { Tokenizer } from "./tokenizer.ts";

/**
 * Options of {@link generateText}: length, sampling controls, stop rule and seed.
 *
 * @example
 * ```ts
 * const options: TextGenerationOptions = { maxNewTokens: 300, temperature: 0.7, topP: 0.9, seed: 7 };
 * for await (const [text] of generateText(generator, tokenizer, "ROMEO:", options)) {
 *   await Deno.stdout.write(new TextEncoder().encode(text));
 * }
 * ```
 */
export interface TextGenerationOptions extends SamplingOptions {
  /** Tokens to generate per sample. */
  maxNewTokens: number;
  /** Stop a sample at `<|endoftext|>` (default: yes when the tokenizer has it and is not character level). */
  stopAtEot?: boolean;
  /** Seeds the sampling (default 1337): the same seed, prompt and model give the same text. */
  seed?: number;
}

/**
 * Generates from one prompt, `generator.batchSize` samples at once, yielding
 * after every step the text each sample gained (often "" for a sample, e.g.
 * one that stopped or holds back half a character). Concatenating a sample's
 * pieces gives its whole continuation. An empty prompt starts from
 * `<|endoftext|>`, or from a line break for vocabularies without it.
 *
 * @param generator The model, loaded for as many samples as wanted.
 * @param tokenizer The tokenizer the model was trained with.
 * @param prompt The text to continue.
 * @param options Length, sampling controls, stop rule and seed.
 * @returns An async iterator of each sample's new text, one array per step.
 * @throws {ConfigError} When the tokenizer cannot encode the prompt.
 * @example
 * ```ts
 * const checkpoint = await loadCheckpoint("out/ckpt.safetensors");
 * const tokenizer = await tokenizerFromMeta(checkpoint.tokenizer);
 * const generator = new Generator(gpu, checkpoint, { batchSize: 1 });
 * for await (const [text] of generateText(generator, tokenizer, "ROMEO:", { maxNewTokens: 200 })) {
 *   await Deno.stdout.write(new TextEncoder().encode(text));
 * }
 * ```
 */
export async function* generateText(
  generator: Generator,
  tokenizer: Tokenizer,
  prompt: string,
  options: TextGenerationOptions,
): AsyncGenerator<string[]> {
  const context = promptTokens(tokenizer, prompt);
  const stopAtEot = options.stopAtEot ?? tokenizer.name !== "char";
  const samples = Array.from({ length: generator.batchSize }, () => ({
    ids: [] as number[],
    stream: new TextStream((ids) => tokenizer.decode(ids)),
  }));
  const steps = generator.generate(
    samples.map(() => [...context]),
    { ...options, stopToken: stopAtEot ? tokenizer.eotId : null },
    new Rng(options.seed ?? 1337),
  );
  for await (const { tokens } of steps) {
    yield samples.map((sample, b) => {
      const token = tokens[b];
      if (token === undefined) return "";
      sample.ids.push(token);
      return sample.stream.push(sample.ids);
    });
  }
  const rest = samples.map((sample) => sample.stream.flush(sample.ids));
  if (rest.some((text) => text !== "")) yield rest;
}

/**
 * The prompt's ids; an empty prompt becomes `<|endoftext|>` (or a line break).
 *
 * @param tokenizer The model's tokenizer.
 * @param prompt The text.
 * @returns At least one id.
 */
export function promptTokens(tokenizer: Tokenizer, prompt: string): number[] {
  let ids: number[];
  try {
    ids = tokenizer.encode(prompt === "" && tokenizer.eotId === null ? "\n" : prompt);
  } catch (error) {
    throw new ConfigError(
      `The prompt cannot be encoded by the model's ${tokenizer.name} tokenizer: ${(error as Error).message}`,
    );
  }
  if (ids.length > 0) return ids;
  if (tokenizer.eotId !== null) return [tokenizer.eotId];
  throw new ConfigError(`The ${tokenizer.name} tokenizer encodes the prompt to no tokens; give some text`);
}

/**
 * Turns a growing list of ids into the text not yet printed, holding back a
 * trailing U+FFFD (a byte-level token that ends mid-character).
 */
class TextStream {
  #decode: (ids: number[]) => string;
  #printed = 0;

  constructor(decode: (ids: number[]) => string) {
    this.#decode = decode;
  }

  push(ids: number[]): string {
    let text = this.#decode(ids);
    while (text.endsWith("\uFFFD")) text = text.slice(0, -1);
    return this.#take(text);
  }

  flush(ids: number[]): string {
    return this.#take(this.#decode(ids));
  }

  #take(text: string): string {
    if (text.length <= this.#printed) return "";
    const fresh = text.slice(this.#printed);
    this.#printed = text.length;
    return fresh;
  }
}
