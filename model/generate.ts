/**
 * Text generation with a KV cache. The prompt is prefilled in one pass (padded
 * to the block; causal attention makes the padding invisible to earlier
 * positions), its keys and values land in the cache, and only the last prompt
 * position's logits are computed. Then each step feeds one token per sequence,
 * attends over the cache, and reads back one row of logits per sequence.
 *
 * When a sequence outgrows block_size the window slides: the cache is
 * re-prefilled from the last three quarters of the block, so the model always
 * sees between 3/4 and all of block_size tokens, and one re-prefill serves the
 * next block_size/4 decode steps rather than one token.
 *
 * When only the temperature shapes the draw ({@link drawsOnGpu}), the tokens are
 * drawn on the GPU and up to {@link DECODE_BURST} steps share one readback: a
 * readback's round trip, not the work, bounds one-token-per-readback decoding
 * (about 12 ms in Deno on the CI machine, or ~80 tokens/s however small the
 * model). The next burst is recorded before the last one is read back, so the
 * GPU keeps decoding through that wait. Greedy draws are the same either way; a
 * temperature draw uses the GPU's noise, seeded from `rng`, instead of `rng` itself.
 *
 * @module
 */

import type { Gpu } from "../kernels/device.ts";
import { selectPosition } from "../kernels/kv_cache.ts";
import { type KernelTuning, tuneKernels, type TuneOptions } from "../kernels/tune.ts";
import { advanceDecodeStep, sampleNextTokens } from "../kernels/draw.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { TexelCache } from "../kernels/texel_cache.ts";
import { canStageTexels } from "../kernels/texels.ts";
import { headSize, type ModelConfig } from "./config.ts";
import { type KvCache, Llama } from "./model.ts";
import type { Rng } from "./rng.ts";
import { drawsOnGpu, sampleToken, type SamplingOptions } from "./sampling.ts";

/** Most decoding steps drawn on the GPU per submit: tokens stream out in bursts of this many. */
export const DECODE_BURST = 16;

/**
 * Options of {@link Generator.generate}: how many tokens, when to stop, and how to sample.
 *
 * @example
 * ```ts
 * const options: GenerateOptions = { maxNewTokens: 200, stopToken: tokenizer.eotId, temperature: 0.8 };
 * for await (const step of generator.generate([tokenizer.encode("ROMEO:")], options, new Rng(7))) {
 *   console.log(step.tokens[0]);
 * }
 * ```
 */
export interface GenerateOptions extends SamplingOptions {
  /** Tokens to add to each sequence. */
  maxNewTokens: number;
  /** A sequence that produces this token stops (null: never). */
  stopToken?: number | null;
  /** Recompute every step from scratch instead of using the cache (for tests and benchmarks). */
  recompute?: boolean;
}

/**
 * One decoding step's output: the token each sequence gained.
 *
 * @example
 * ```ts
 * const ids: number[] = [];
 * for await (const step of generator.generate([prompt], { maxNewTokens: 50 }, rng)) {
 *   if (step.tokens[0] !== undefined) ids.push(step.tokens[0]);
 * }
 * console.log(tokenizer.decode(ids));
 * ```
 */
export interface GenerateStep {
  /** The new token of each sequence (undefined for a sequence that has stopped). */
  tokens: (number | undefined)[];
}

/**
 * Prefill and decode for `batchSize` sequences of one model, with a KV cache on
 * the GPU; it yields token ids ({@link generateText} turns them into text).
 *
 * @example
 * ```ts
 * const checkpoint = await loadCheckpoint("out/ckpt.safetensors");
 * const generator = new Generator(gpu, checkpoint, { batchSize: 2 });
 * const prompt = [0]; // a line break in shakespeare_char
 * for await (const { tokens } of generator.generate([prompt, prompt], { maxNewTokens: 100 }, new Rng(1))) {
 *   console.log(tokens); // [id, id]
 * }
 * generator.release();
 * ```
 */
export class Generator {
  /** The device. */
  readonly gpu: Gpu;
  /** The model's architecture. */
  readonly config: ModelConfig;
  /** Sequences decoded together. */
  readonly batchSize: number;
  /** Times of the last generate call: prefill (incl. re-prefills) and decode, ms and tokens. */
  readonly timing = { prefillMs: 0, prefillTokens: 0, decodeMs: 0, decodeTokens: 0 };

  #block: Llama;
  #step: Llama;
  /**
   * Kept texel copies for texel kernels (software adapters): of the weights, made
   * once, and of what a decoding step's matmuls and attention read, written by the
   * kernels that produce it rather than copied before each read.
   */
  #texels: TexelCache;
  #cache: KvCache;
  #blockTokens: Tensor;
  #stepTokens: Tensor;
  #lastRow: Tensor;
  #hidden: Tensor;
  #logits: Tensor;
  /** [step, seed] of the GPU draws. */
  #drawState: Tensor;
  /** The tokens a burst drew, (DECODE_BURST, B). */
  #history: Tensor;

  /**
   * Allocates both models (sharing weights), the cache and the step buffers.
   *
   * @param gpu The device.
   * @param model The architecture and flat parameters (e.g. a loaded checkpoint).
   * @param options Sequences per batch, and the compute dtype.
   * @example
   * ```ts
   * const generator = new Generator(gpu, await loadCheckpoint("out/ckpt.safetensors"), { batchSize: 1 });
   * for await (const { tokens } of generator.generate([[0]], { maxNewTokens: 100 }, rng)) console.log(tokens);
   * ```
   */
  constructor(
    gpu: Gpu,
    model: { config: ModelConfig; params: Float32Array },
    options: { batchSize: number; dtype?: "f32" | "f16" },
  ) {
    this.gpu = gpu;
    this.config = model.config;
    this.batchSize = options.batchSize;
    const B = options.batchSize;
    const T = model.config.block_size;
    const dtype = options.dtype ?? "f32";
    this.#block = new Llama(gpu, model.config, { batchSize: B, training: false, dtype });
    this.#block.upload(model.params);
    this.#step = new Llama(gpu, model.config, {
      batchSize: B,
      blockSize: 1,
      training: false,
      dtype,
      weightsFrom: this.#block,
    });
    const kvWidth = model.config.n_kv_head * headSize(model.config);
    const layers = Array.from({ length: model.config.n_layer }, (_, l) => l);
    this.#cache = {
      k: layers.map((l) => gpu.tensor([B, T, kvWidth], dtype, { label: `layer ${l} k cache` })),
      v: layers.map((l) => gpu.tensor([B, T, kvWidth], dtype, { label: `layer ${l} v cache` })),
      position: gpu.tensor([1], "u32", { label: "decode position" }),
    };
    const weights = [this.#block.params, this.#block.weights16].filter((t): t is Tensor => t !== null);
    // What a decoding step's matmuls and attention read by texels (software adapters only).
    const stepActs = this.#step.acts;
    const read = [
      ...stepActs.layers.flatMap((a) => [a.ln1, a.atty, a.ln2, a.hidden]),
      stepActs.lnf,
      ...this.#cache.k,
      ...this.#cache.v,
    ];
    this.#texels = new TexelCache(gpu, weights, { mirrored: read.filter((t) => canStageTexels(gpu, t)) });
    this.#blockTokens = gpu.tensor([B, T], "u32", { label: "prefill tokens" });
    this.#stepTokens = gpu.tensor([B, 1], "u32", { label: "step tokens" });
    this.#lastRow = gpu.tensor([1], "u32", { label: "last prompt row" });
    this.#hidden = gpu.tensor([B, model.config.n_embd], dtype, { label: "last hidden" });
    this.#logits = gpu.tensor([B, model.config.vocab_size], "f32", { label: "next logits" });
    this.#drawState = gpu.tensor([2], "u32", { label: "draw step and seed" });
    this.#history = gpu.tensor([DECODE_BURST, B], "u32", { label: "drawn tokens" });
  }

  /**
   * Extends each context by up to `maxNewTokens` tokens, yielding after every
   * step. Contexts may be longer than block_size (the window slides).
   *
   * @param contexts One token list per sequence (batchSize of them, equal lengths, at least 1 token).
   * @param options Sampling controls, length, stop token.
   * @param rng The generator for sampling.
   * @returns The steps, as they are produced.
   */
  async *generate(contexts: number[][], options: GenerateOptions, rng: Rng): AsyncGenerator<GenerateStep> {
    const T = this.config.block_size;
    const keep = T - Math.max(1, Math.floor(T / 4));
    const sequences = contexts.map((c) => [...c]);
    const counts = sequences.map((s) => {
      const m = new Map<number, number>();
      for (const t of s) m.set(t, (m.get(t) ?? 0) + 1);
      return m;
    });
    const done = sequences.map(() => false);
    Object.assign(this.timing, { prefillMs: 0, prefillTokens: 0, decodeMs: 0, decodeTokens: 0 });

    const V = this.config.vocab_size;
    const onGpu = !options.recompute && drawsOnGpu(options, V);
    let length = sequences[0].length;
    let start = Math.max(0, length - T); // first token in the window
    // Logits to draw the next tokens from on the CPU, or null when the GPU draws them.
    let logits: Float32Array | null = await this.#prefill(sequences.map((s) => s.slice(start)));
    let produced = 0;
    const B = this.batchSize;
    const draw = () => ({
      temperature: options.temperature ?? 1,
      seed: (options.temperature ?? 1) === 0 ? 0 : Math.floor(rng.uniform() * 2 ** 32),
    });
    // A burst recorded before the last one is read back (see #startBurst), or null.
    let ahead: { count: number; steps: Promise<number[][]> } | null = null;
    while (options.maxNewTokens > 0) {
      let steps: number[][];
      if (logits) {
        const rows = logits;
        steps = [
          sequences.map((_, b) => sampleToken(rows.subarray(b * V, (b + 1) * V), counts[b], options, rng)),
        ];
      } else {
        const began = performance.now();
        // Steps until the maximum, or until the cache's last slot (the input sits at slot length - 1 - start).
        const slot = length - 1 - start;
        const count = Math.min(DECODE_BURST, options.maxNewTokens - produced, T - slot);
        const burst = ahead ?? {
          count,
          steps: this.#startBurst(count, draw(), { tokens: sequences.map((s) => s[length - 1]), slot }),
        };
        // The next burst goes in before this one is read back, so the GPU decodes while the
        // readback waits (about 10 ms in Deno); a stop token that ends the generation wastes it.
        const nextCount = Math.min(
          DECODE_BURST,
          options.maxNewTokens - produced - burst.count,
          T - (slot + burst.count),
        );
        ahead = nextCount > 0 ? { count: nextCount, steps: this.#startBurst(nextCount, draw()) } : null;
        ahead?.steps.catch(() => {}); // read next time round, or dropped when the generation ends
        steps = await burst.steps;
        this.timing.decodeMs += performance.now() - began;
        this.timing.decodeTokens += burst.count * B;
      }
      for (const next of steps) {
        const tokens = next.map((token, b) => {
          // A stopped sequence repeats its last token so the batch stays aligned; its output is ignored.
          if (done[b]) {
            sequences[b].push(sequences[b].at(-1)!);
            return undefined;
          }
          sequences[b].push(token);
          counts[b].set(token, (counts[b].get(token) ?? 0) + 1);
          if (token === options.stopToken) done[b] = true;
          return token;
        });
        yield { tokens };
        produced++;
        if (done.every(Boolean) || produced === options.maxNewTokens) return;
        length++;
      }
      if (options.recompute || length - start > T) {
        start = options.recompute ? Math.max(0, length - T) : length - keep;
        logits = await this.#prefill(sequences.map((s) => s.slice(start)));
      } else if (onGpu) {
        logits = null;
      } else {
        logits = await this.#decode(sequences.map((s) => s[length - 1]), length - 1 - start);
      }
    }
  }

  /**
   * Tunes the matmuls and attention of a prefill and of a decoding step on this
   * device (see `kernels/tune.ts`): speed only, the tokens drawn are the same.
   * Call it before generating: timing writes the activations.
   *
   * @param options Rounds and candidates.
   * @returns One row per call tuned.
   * @example
   * ```ts
   * const tuned = await generator.tuneKernels();
   * console.error(`tuned ${tuned.length} calls: ${tunedSpeedup(tuned).toFixed(2)}x`);
   * ```
   */
  tuneKernels(options?: TuneOptions): Promise<KernelTuning[]> {
    return tuneKernels(this.gpu, (rec) => {
      this.#block.forwardHidden(rec, { tokens: this.#blockTokens, cache: this.#cache });
      selectPosition(rec, { out: this.#hidden, x: this.#block.acts.lnf, position: this.#lastRow });
      this.#block.head(rec, { out: this.#logits, hidden: this.#hidden });
      this.#step.forwardHidden(rec, { tokens: this.#stepTokens, cache: this.#cache });
      this.#step.head(rec, { out: this.#logits, hidden: this.#step.acts.lnf });
    }, options);
  }

  /** Frees every buffer. */
  release(): void {
    this.#step.release();
    this.#block.release();
    this.#texels.release();
    for (const t of [...this.#cache.k, ...this.#cache.v, this.#cache.position]) this.gpu.release(t);
    const buffers = [this.#blockTokens, this.#stepTokens, this.#lastRow, this.#hidden, this.#logits];
    for (const t of [...buffers, this.#drawState, this.#history]) this.gpu.release(t);
  }

  /** Runs the block model over each window (padded to T), fills the cache, returns the last row's logits. */
  async #prefill(windows: number[][]): Promise<Float32Array> {
    const started = performance.now();
    const T = this.config.block_size;
    const n = windows[0].length;
    const tokens = new Uint32Array(this.batchSize * T);
    windows.forEach((w, b) => tokens.set(w, b * T));
    this.gpu.write(this.#blockTokens, tokens);
    this.gpu.write(this.#lastRow, [n - 1]);
    const rec = this.gpu.recorder({ label: "prefill", texelCache: this.#texels });
    this.#block.forwardHidden(rec, { tokens: this.#blockTokens, cache: this.#cache });
    selectPosition(rec, { out: this.#hidden, x: this.#block.acts.lnf, position: this.#lastRow });
    this.#block.head(rec, { out: this.#logits, hidden: this.#hidden });
    rec.submit();
    const logits = await this.gpu.readFloats(this.#logits);
    this.timing.prefillMs += performance.now() - started;
    this.timing.prefillTokens += n * this.batchSize;
    return logits;
  }

  /**
   * Records `count` decoding steps, the GPU drawing each step's tokens and feeding
   * them to the next, and starts reading the drawn tokens back (a row of B per
   * step). `from` gives the first step's tokens and cache slot; without it the
   * steps continue from where the GPU's previous burst left its tokens and position.
   */
  #startBurst(
    count: number,
    draw: { temperature: number; seed: number },
    from?: { tokens: number[]; slot: number },
  ): Promise<number[][]> {
    if (from) {
      this.gpu.write(this.#stepTokens, from.tokens);
      this.gpu.write(this.#cache.position, [from.slot]);
    }
    this.gpu.write(this.#drawState, [0, draw.seed]);
    for (let step = 0; step < count; step++) {
      // A submit per step lets the GPU run one step while the CPU records the next.
      const rec = this.gpu.recorder({ label: "decode step", texelCache: this.#texels });
      this.#step.forwardHidden(rec, { tokens: this.#stepTokens, cache: this.#cache });
      this.#step.head(rec, { out: this.#logits, hidden: this.#step.acts.lnf });
      sampleNextTokens(rec, {
        tokens: this.#stepTokens,
        history: this.#history,
        logits: this.#logits,
        state: this.#drawState,
        temperature: draw.temperature,
      });
      advanceDecodeStep(rec, { state: this.#drawState, position: this.#cache.position });
      rec.submit();
    }
    // The copy is queued behind these steps; later bursts may overwrite the history.
    const B = this.batchSize;
    return this.gpu.read(this.#history).then((drawn) =>
      Array.from({ length: count }, (_, step) => Array.from(drawn.subarray(step * B, (step + 1) * B)))
    );
  }

  /** Feeds one token per sequence at cache slot `position`, returns the next logits. */
  async #decode(tokens: number[], position: number): Promise<Float32Array> {
    const started = performance.now();
    this.gpu.write(this.#stepTokens, tokens);
    this.gpu.write(this.#cache.position, [position]);
    const rec = this.gpu.recorder({ label: "decode", texelCache: this.#texels });
    this.#step.forwardHidden(rec, { tokens: this.#stepTokens, cache: this.#cache });
    this.#step.head(rec, { out: this.#logits, hidden: this.#step.acts.lnf });
    rec.submit();
    const logits = await this.gpu.readFloats(this.#logits);
    this.timing.decodeMs += performance.now() - started;
    this.timing.decodeTokens += this.batchSize;
    return logits;
  }
}
