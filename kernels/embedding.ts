/**
 * Token embedding: out[p] = weight[tokens[p]], and its backward
 * dweight[v] += Σ dout[p] over the positions p holding token v.
 *
 * `dweight` is a parameter gradient: {@link embeddingBackward} **adds** into it
 * (+=), so micro-steps and a tied lm_head accumulate for free.
 *
 * The backward needs no float atomics (WGSL has none) and is deterministic by
 * construction: the CPU, which uploads the tokens every step anyway, groups the
 * positions by token with {@link buildEmbeddingIndex} (a counting sort, O(N), no
 * pass over V), and {@link EmbeddingIndexBuffer} uploads that index into a buffer
 * sized once for N. The kernel then gives each (unique token, chunk of channels)
 * its own workgroup: each thread sums its channel of the token's dout rows in
 * ascending position order and adds the sum into the token's dweight row. No two
 * workgroups touch the same dweight element, so there is no race and no order to
 * depend on: two runs give the same bits.
 *
 * Sizes: N positions (B·T), V vocabulary, C channels. Weights and gradients may
 * be f16 (f32 arithmetic); rows are read as vec4 when C is a multiple of 4.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import { recordElementwise } from "./elementwise.ts";
import type { Recorder } from "./recorder.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { declare, expectDType, expectF16Support, expectLength } from "./wgsl.ts";

/** Channel lanes per backward workgroup (each a vec4 when C % 4 == 0). */
const LANES = 64;

/**
 * Positions grouped by token: bucket u holds the positions of token
 * `tokenIds[u]`, ascending, at `positions[offsets[u] .. offsets[u + 1])`. It
 * lets the backward sum each token's gradient rows without atomics.
 *
 * @example
 * ```ts
 * const index: EmbeddingIndex = buildEmbeddingIndex(new Uint32Array([5, 2, 5]), 8);
 * for (let u = 0; u < index.unique; u++) {
 *   const at = index.positions.subarray(index.offsets[u], index.offsets[u + 1]);
 *   console.log(index.tokenIds[u], at); // 5 Uint32Array(2) [0, 2], then 2 Uint32Array(1) [1]
 * }
 * ```
 */
export interface EmbeddingIndex {
  /** V the tokens were checked against. */
  vocabSize: number;
  /** Number of positions N. */
  n: number;
  /** Distinct tokens U. */
  unique: number;
  /** The distinct tokens in order of first appearance, [U]. */
  tokenIds: Uint32Array;
  /** Bucket starts, [U + 1]; offsets[U] = N. */
  offsets: Uint32Array;
  /** Positions grouped by token, ascending within a token, [N]. */
  positions: Uint32Array;
  /** Positions of the most frequent token (the longest loop of the backward). */
  largest: number;
}

/**
 * Groups the positions of `tokens` by token id (a stable counting sort), for
 * {@link embeddingBackward}. Pure: allocates its result and an O(V) scratch array.
 *
 * @param tokens Token ids, [N].
 * @param vocabSize V; every token must be below it.
 * @returns The index.
 * @throws {GpuError} Naming the first token ≥ V and its position.
 * @example
 * ```ts
 * const index = buildEmbeddingIndex(new Uint32Array([5, 2, 5]), 8);
 * // index.tokenIds = [5, 2], index.offsets = [0, 2, 3], index.positions = [0, 2, 1]
 * ```
 */
export function buildEmbeddingIndex(tokens: Uint32Array, vocabSize: number): EmbeddingIndex {
  if (!Number.isInteger(vocabSize) || vocabSize < 1) {
    throw new GpuError(`embedding index: vocab size ${vocabSize} must be a positive integer`);
  }
  const n = tokens.length;
  const index: EmbeddingIndex = {
    vocabSize,
    n,
    unique: 0,
    largest: 0,
    tokenIds: new Uint32Array(n),
    offsets: new Uint32Array(n + 1),
    positions: new Uint32Array(n),
  };
  fillIndex(tokens, new Uint32Array(vocabSize), index);
  return {
    ...index,
    tokenIds: index.tokenIds.subarray(0, index.unique),
    offsets: index.offsets.subarray(0, index.unique + 1),
  };
}

/**
 * Fills `index` (arrays sized for N) from `tokens`. `counts` is a zeroed [V]
 * scratch array and is left zeroed again, touching only the tokens seen, so a
 * caller can reuse it every step without an O(V) clear.
 */
function fillIndex(tokens: Uint32Array, counts: Uint32Array, index: EmbeddingIndex): void {
  const { vocabSize } = index;
  const { tokenIds, offsets, positions } = index;
  let unique = 0;
  for (let p = 0; p < tokens.length; p++) {
    const token = tokens[p];
    if (token >= vocabSize) {
      for (let u = 0; u < unique; u++) counts[tokenIds[u]] = 0;
      throw new GpuError(
        `embedding index: token ${token} at position ${p} is not below the vocab size ${vocabSize}; ` +
          "check that the data was tokenized with this model's vocabulary",
      );
    }
    if (counts[token]++ === 0) tokenIds[unique++] = token;
  }
  // counts[token] becomes the token's next free slot in `positions`.
  let start = 0;
  let largest = 0;
  for (let u = 0; u < unique; u++) {
    const token = tokenIds[u];
    offsets[u] = start;
    start += counts[token];
    largest = Math.max(largest, counts[token]);
    counts[token] = offsets[u];
  }
  offsets[unique] = start;
  for (let p = 0; p < tokens.length; p++) positions[counts[tokens[p]]++] = p;
  for (let u = 0; u < unique; u++) counts[tokenIds[u]] = 0;
  index.unique = unique;
  index.largest = largest;
}

/**
 * The GPU copy of an {@link EmbeddingIndex}, in one u32 buffer sized once for N
 * and rewritten with `writeBuffer` every step: nothing is allocated per step,
 * on the GPU or (for {@link EmbeddingIndexBuffer.update}) on the host.
 *
 * Buffer layout, u32 [3N + 2]: `[U, offsets (N + 1), tokenIds (N), positions (N)]`.
 *
 * Order per step: `update(tokens)`, then record {@link embeddingBackward}, then
 * submit. The dispatch is sized for the U of the last update, and `writeBuffer`
 * takes effect before the next submit, so an update between recording and
 * submitting would hand the recorded work the next step's index.
 *
 * @example
 * ```ts
 * const index = new EmbeddingIndexBuffer(gpu, { n: B * T, vocabSize: V }); // once
 * // every step, with the step's tokens (a Uint32Array of B·T ids):
 * index.update(tokens);
 * const rec = gpu.recorder();
 * embeddingBackward(rec, { dweight: dwte, dout: dx, index }); // dwte [V, C] += rows of dx [B, T, C]
 * rec.submit();
 * ```
 */
export class EmbeddingIndexBuffer {
  /** Positions N the buffer holds. */
  readonly n: number;
  /** V the tokens are checked against. */
  readonly vocabSize: number;
  /** The GPU index, u32 [3N + 2]. */
  readonly tensor: Tensor;
  #gpu: Gpu;
  #host: Uint32Array<ArrayBuffer>;
  #counts: Uint32Array;
  #index: EmbeddingIndex;

  /**
   * Allocates the GPU buffer and host scratch for N positions.
   *
   * @param gpu The device.
   * @param options N positions per step and V, the vocabulary size.
   * @example
   * ```ts
   * const index = new EmbeddingIndexBuffer(gpu, { n: B * T, vocabSize: V });
   * index.update(tokensOfThisStep);
   * embeddingBackward(rec, { dweight: dwte, dout: dx, index });
   * ```
   */
  constructor(gpu: Gpu, options: { n: number; vocabSize: number; label?: string }) {
    const { n, vocabSize } = options;
    if (!Number.isInteger(n) || n < 1 || !Number.isInteger(vocabSize) || vocabSize < 1) {
      throw new GpuError(`EmbeddingIndexBuffer: n ${n} and vocabSize ${vocabSize} must be positive integers`);
    }
    this.n = n;
    this.vocabSize = vocabSize;
    this.#gpu = gpu;
    this.tensor = gpu.tensor([3 * n + 2], "u32", { label: options.label ?? "embedding index" });
    this.#host = new Uint32Array(3 * n + 2);
    this.#counts = new Uint32Array(vocabSize);
    this.#index = {
      vocabSize,
      n,
      unique: 0,
      largest: 0,
      offsets: this.#host.subarray(1, n + 2),
      tokenIds: this.#host.subarray(n + 2, 2 * n + 2),
      positions: this.#host.subarray(2 * n + 2),
    };
  }

  /** Distinct tokens U of the last update (the backward's dispatch size). */
  get unique(): number {
    return this.#index.unique;
  }

  /**
   * Builds the index of this step's tokens in place and uploads it.
   *
   * @param tokens Exactly N token ids.
   * @throws {GpuError} On a wrong length or a token ≥ V (the previous index stays).
   */
  update(tokens: Uint32Array): void {
    if (tokens.length !== this.n) {
      throw new GpuError(`EmbeddingIndexBuffer.update: got ${tokens.length} tokens, expected ${this.n}`);
    }
    const { unique, largest } = this.#index;
    try {
      fillIndex(tokens, this.#counts, this.#index);
      // The backward loops once per position of a token (see `gpu.loopLimit`).
      if (this.#index.largest > this.#gpu.loopLimit) {
        throw new GpuError(
          `EmbeddingIndexBuffer.update: a token fills ${this.#index.largest} of ${this.n} positions, more than the ` +
            `${this.#gpu.loopLimit} loop iterations this adapter runs per invocation; lower batch_size or block_size`,
        );
      }
    } catch (error) {
      // fillIndex may have written part of the host copy; the GPU copy is intact,
      // and so is U, which sizes the next dispatch.
      this.#index.unique = unique;
      this.#index.largest = largest;
      throw error;
    }
    this.#host[0] = this.#index.unique;
    this.#gpu.queue.writeBuffer(this.tensor.buffer, this.tensor.byteOffset, this.#host);
  }

  /** Frees the GPU buffer. */
  release(): void {
    this.#gpu.release(this.tensor);
  }
}

/** True when `t` can be bound as vec4 (16-byte aligned, length a multiple of 4). */
function vec4Ready(t: Tensor): boolean {
  return t.byteOffset % (4 * (t.dtype === "f16" ? 2 : 4)) === 0;
}

/**
 * Arguments of {@link embeddingForward}: the rows to write, the token ids and
 * the table to look them up in.
 *
 * @example
 * ```ts
 * const args: EmbeddingForwardArgs = {
 *   out: gpu.tensor([B, T, C]),
 *   tokens: gpu.tensor([B * T], "u32", { data: batchTokens }),
 *   weight: wte, // [V, C]
 * };
 * embeddingForward(rec, args);
 * ```
 */
export interface EmbeddingForwardArgs {
  /** Output rows, f32 or f16 [..., C] (N·C elements), overwritten. */
  out: Tensor;
  /** Token ids, u32 [N]. */
  tokens: Tensor;
  /** The embedding table, f32 or f16 [V, C]. */
  weight: Tensor;
  /** Move rows as vec4 where C % 4 == 0 and the tensors are aligned (default true); false for benchmarks. */
  vec4?: boolean;
}

/**
 * Arguments of {@link embeddingBackward}: the table's gradient to add into,
 * the gradient of the looked-up rows, and this step's token index.
 *
 * @example
 * ```ts
 * index.update(batchTokens); // an EmbeddingIndexBuffer for B·T positions
 * const args: EmbeddingBackwardArgs = { dweight: dwte, dout: dx, index }; // dwte [V, C], dx [B, T, C]
 * embeddingBackward(rec, args);
 * ```
 */
export interface EmbeddingBackwardArgs {
  /** Gradient of the table, f32 or f16 [V, C]; added into (+=). */
  dweight: Tensor;
  /** Gradient of the output rows, f32 or f16 [..., C] (N·C elements). */
  dout: Tensor;
  /** This step's token index (call {@link EmbeddingIndexBuffer.update} first). */
  index: EmbeddingIndexBuffer;
  /** Move rows as vec4 where C % 4 == 0 and the tensors are aligned (default true); false for benchmarks. */
  vec4?: boolean;
}

/**
 * Records out[p, :] = weight[tokens[p], :]. A token ≥ V (which the index builder
 * would refuse) gives a zero row rather than a read out of bounds.
 *
 * @param rec The recorder.
 * @param args Output `out`, input `tokens`, weight `weight`.
 * @example
 * ```ts
 * embeddingForward(rec, { out: x, tokens, weight: wte }); // x: (B, T, C)
 * ```
 */
export function embeddingForward(rec: Recorder, args: EmbeddingForwardArgs): void {
  const kernel = "embeddingForward";
  const { out, tokens, weight } = args;
  const [vocab, channels] = matrixShape(kernel, "weight", weight);
  const n = tokens.length;
  expectDType(kernel, "out", out, ["f32", "f16"]);
  expectDType(kernel, "tokens", tokens, ["u32"]);
  expectDType(kernel, "weight", weight, ["f32", "f16"]);
  expectLength(kernel, "out", out, n * channels);
  const vec = (args.vec4 ?? true) && channels % 4 === 0 && vec4Ready(out) && vec4Ready(weight);
  const width = vec ? 4 : 1;
  const type = (dtype: string) => vec ? `vec4<${dtype}>` : dtype;
  recordElementwise(rec, {
    label: `${kernel} ${weight.dtype}->${out.dtype}${vec ? " vec4" : ""}`,
    decls: [
      { name: "tokens", tensor: tokens },
      { name: "weight", tensor: weight, element: type(weight.dtype) },
      { name: "out", tensor: out, write: true, element: type(out.dtype) },
    ],
    n: (n * channels) / width,
    body: `
  let C = ${channels / width}u;
  let p = i / C;
  let token = tokens[p];
  var row = ${type(out.dtype)}(0.0);
  if (token < ${vocab}u) { row = ${type(out.dtype)}(weight[token * C + (i - p * C)]); }
  out[i] = row;`,
  });
}

/**
 * Records dweight[v, :] += Σ dout[p, :] over the positions p with tokens[p] = v,
 * summed in ascending p from the index of {@link EmbeddingIndexBuffer.update}.
 * Deterministic; adds into `dweight`.
 *
 * @param rec The recorder.
 * @param args Gradient `dweight` (+=), input `dout`, the `index`.
 * @example
 * ```ts
 * index.update(tokens);
 * embeddingBackward(rec, { dweight: dwte, dout: dx, index });
 * ```
 */
export function embeddingBackward(rec: Recorder, args: EmbeddingBackwardArgs): void {
  const kernel = "embeddingBackward";
  const { dweight, dout, index } = args;
  const [vocab, channels] = matrixShape(kernel, "dweight", dweight);
  const n = index.n;
  if (vocab !== index.vocabSize) {
    throw new GpuError(
      `${kernel}: dweight "${dweight.label}" has ${vocab} rows but the index was built for vocab size ${index.vocabSize}`,
    );
  }
  expectDType(kernel, "dweight", dweight, ["f32", "f16"]);
  expectDType(kernel, "dout", dout, ["f32", "f16"]);
  expectLength(kernel, "dout", dout, n * channels);
  expectF16Support(kernel, rec.gpu.features.f16, [dweight, dout]);
  const vec = (args.vec4 ?? true) && channels % 4 === 0 && vec4Ready(dout) && vec4Ready(dweight);
  const width = vec ? 4 : 1;
  const type = (dtype: string) => vec ? `vec4<${dtype}>` : dtype;
  const columns = channels / width;
  const chunks = Math.ceil(columns / LANES);
  const { wgsl, bindings } = declare([
    { name: "dout", tensor: dout, element: type(dout.dtype) },
    { name: "index", tensor: index.tensor },
    { name: "dweight", tensor: dweight, write: true, element: type(dweight.dtype) },
  ]);
  const code = `${wgsl}
const C = ${columns}u;
const CHUNKS = ${chunks}u;
const OFFSETS = 1u;
const TOKENS = ${n + 2}u;
const POSITIONS = ${2 * n + 2}u;
@compute @workgroup_size(${LANES})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let w = ${WGSL_LINEAR_WORKGROUP};
  let u = w / CHUNKS;
  let c = (w - u * CHUNKS) * ${LANES}u + lid.x;
  if (u >= index[0] || c >= C) { return; }
  let end = index[OFFSETS + u + 1u];
  var sum = ${type("f32")}(0.0);
  for (var k = index[OFFSETS + u]; k < end; k++) {
    sum += ${type("f32")}(dout[index[POSITIONS + k] * C + c]);
  }
  let o = index[TOKENS + u] * C + c;
  dweight[o] = ${type(dweight.dtype)}(${type("f32")}(dweight[o]) + sum);
}`;
  const label = `${kernel} ${dout.dtype}->${dweight.dtype}${vec ? " vec4" : ""}`;
  rec.dispatch(rec.gpu.pipelines.get(label, code), bindings, grid(rec.gpu, index.unique * chunks));
}

/** [V, C] of a 2-D weight or gradient. */
function matrixShape(kernel: string, name: string, t: Tensor): [number, number] {
  if (t.shape.length !== 2) {
    throw new GpuError(`${kernel}: ${name} "${t.label}" has shape [${t.shape.join(", ")}], expected [V, C]`);
  }
  return [t.shape[0], t.shape[1]];
}
