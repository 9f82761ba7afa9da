/**
 * Choosing the next token from logits, with the usual controls: repetition and
 * frequency penalties over the tokens seen so far, temperature (0: greedy),
 * top-k and top-p (nucleus) filtering, and a seeded draw.
 *
 * @module
 */

import type { Rng } from "./rng.ts";

/**
 * How to pick each next token from the logits; shared by {@link GenerateOptions}
 * and {@link TextGenerationOptions}. Every field is optional: the defaults draw
 * from the model's plain distribution.
 *
 * @example
 * ```ts
 * const sampling: SamplingOptions = { temperature: 0.8, topK: 200, repetitionPenalty: 1.3 };
 * const stream = generateText(generator, tokenizer, "ROMEO:", { ...sampling, maxNewTokens: 100 });
 * ```
 */
export interface SamplingOptions {
  /** Divides the logits; 0 picks the most likely token (greedy). Default 1. */
  temperature?: number;
  /** Keep only the k most likely tokens (0: all). Default 0. */
  topK?: number;
  /** Keep the fewest most likely tokens whose probability sums to at least p (1: all). Default 1. */
  topP?: number;
  /**
   * Hugging Face's repetition penalty (CTRL): a seen token's logit is divided by
   * it when positive and multiplied by it when negative. 1 disables. Default 1.
   */
  repetitionPenalty?: number;
  /** OpenAI's frequency penalty: a seen token's logit drops by this times its count. Default 0. */
  frequencyPenalty?: number;
}

/**
 * Applies the penalties to a copy of `logits`: every token in `counts` (token →
 * times seen in the context so far, prompt included) gets the repetition
 * penalty once and the frequency penalty per occurrence.
 *
 * @param logits One row of logits (V).
 * @param counts Occurrences of each token so far.
 * @param options The penalties.
 * @returns Penalised logits in float64.
 * @example
 * ```ts
 * penalize(Float32Array.of(2, -2, 1), new Map([[0, 1], [1, 3]]), { repetitionPenalty: 2 }); // [1, -4, 1]
 * ```
 */
export function penalize(
  logits: ArrayLike<number>,
  counts: ReadonlyMap<number, number>,
  options: SamplingOptions,
): Float64Array {
  const out = Float64Array.from(logits);
  const repetition = options.repetitionPenalty ?? 1;
  const frequency = options.frequencyPenalty ?? 0;
  if (repetition === 1 && frequency === 0) return out;
  for (const [token, count] of counts) {
    if (count <= 0 || token >= out.length) continue;
    let value = out[token];
    if (repetition !== 1) value = value > 0 ? value / repetition : value * repetition;
    out[token] = value - frequency * count;
  }
  return out;
}

/**
 * The probabilities a draw uses: softmax of logits/temperature restricted to the
 * top-k and then the top-p set (renormalised). Tokens outside get 0.
 *
 * @param logits Penalised logits (V).
 * @param options Temperature (> 0), top-k, top-p.
 * @returns Probabilities summing to 1.
 */
export function samplingDistribution(logits: ArrayLike<number>, options: SamplingOptions): Float64Array {
  const temperature = options.temperature ?? 1;
  const V = logits.length;
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  const k = options.topK && options.topK > 0 ? Math.min(options.topK, V) : V;
  const kept = order.slice(0, k);
  const max = logits[kept[0]];
  const weights = kept.map((i) => Math.exp((logits[i] - max) / temperature));
  let total = weights.reduce((a, b) => a + b, 0);
  const topP = options.topP ?? 1;
  let count = kept.length;
  if (topP < 1) {
    let cumulative = 0;
    count = 0;
    while (count < kept.length && cumulative < topP * total) cumulative += weights[count++];
    total = cumulative;
  }
  const probabilities = new Float64Array(V);
  for (let j = 0; j < count; j++) probabilities[kept[j]] = weights[j] / total;
  return probabilities;
}

/**
 * Picks the next token.
 *
 * @param logits One row of logits (V).
 * @param counts Occurrences of each token in the context so far (for the penalties).
 * @param options Sampling controls.
 * @param rng The generator (untouched when greedy).
 * @returns The token id.
 * @example
 * ```ts
 * const next = sampleToken(logits, counts, { temperature: 0.8, topK: 200 }, rng);
 * ```
 */
export function sampleToken(
  logits: ArrayLike<number>,
  counts: ReadonlyMap<number, number>,
  options: SamplingOptions,
  rng: Rng,
): number {
  const adjusted = penalize(logits, counts, options);
  if ((options.temperature ?? 1) === 0) {
    let best = 0;
    for (let i = 1; i < adjusted.length; i++) if (adjusted[i] > adjusted[best]) best = i;
    return best;
  }
  const probabilities = samplingDistribution(adjusted, options);
  let u = rng.uniform();
  let last = 0;
  for (let i = 0; i < probabilities.length; i++) {
    if (probabilities[i] === 0) continue;
    last = i;
    u -= probabilities[i];
    if (u < 0) return i;
  }
  return last; // rounding left u a hair above 0
}

/**
 * Whether a draw with `options` is a plain draw from softmax(logits/temperature)
 * or the argmax, which the GPU can make (`kernels/draw.ts`): no penalties, and,
 * unless greedy (where they change nothing), no top-p and no top-k smaller than
 * the vocabulary.
 *
 * @param options Sampling controls.
 * @param vocabSize V.
 * @returns True when nothing but the temperature shapes the draw.
 * @example
 * ```ts
 * drawsOnGpu({ temperature: 0.8, topK: 200 }, 65); // true: top 200 of 65 keeps all
 * drawsOnGpu({ temperature: 0.8, topK: 200 }, 50257); // false
 * drawsOnGpu({ temperature: 0, topK: 200 }, 50257); // true: greedy ignores top-k
 * ```
 */
export function drawsOnGpu(options: SamplingOptions, vocabSize: number): boolean {
  const { temperature = 1, topK = 0, topP = 1, repetitionPenalty = 1, frequencyPenalty = 0 } = options;
  const unpenalized = repetitionPenalty === 1 && frequencyPenalty === 0;
  if (temperature === 0) return unpenalized;
  return unpenalized && (topK === 0 || topK >= vocabSize) && topP === 1;
}

/**
 * Checks sampling options, naming the first bad one.
 *
 * @param options The options.
 * @returns A message, or "" when they are valid.
 */
export function samplingProblem(options: SamplingOptions): string {
  const { temperature = 1, topK = 0, topP = 1, repetitionPenalty = 1, frequencyPenalty = 0 } = options;
  if (!(temperature >= 0 && Number.isFinite(temperature))) {
    return `--temperature must be >= 0, got ${temperature}`;
  }
  if (!(Number.isInteger(topK) && topK >= 0)) return `--top_k must be a non-negative integer, got ${topK}`;
  if (!(topP > 0 && topP <= 1)) return `--top_p must be in (0, 1], got ${topP}`;
  if (!(repetitionPenalty > 0 && Number.isFinite(repetitionPenalty))) {
    return `--repetition_penalty must be > 0 (1 disables), got ${repetitionPenalty}`;
  }
  if (!Number.isFinite(frequencyPenalty)) {
    return `--frequency_penalty must be a number, got ${frequencyPenalty}`;
  }
  return "";
}
