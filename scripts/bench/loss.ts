/**
 * Bench cases of the loss-side kernels: fused softmax cross-entropy (forward,
 * mean and in-place backward together, as a training step runs them) and the
 * token embedding forward and backward. All memory-bound: reported in GB/s.
 *
 * @module
 */

import {
  crossEntropyBackward,
  crossEntropyForward,
  crossEntropyLanes,
  lossMean,
} from "../../kernels/cross_entropy.ts";
import type { Gpu } from "../../kernels/device.ts";
import { embeddingBackward, embeddingForward, EmbeddingIndexBuffer } from "../../kernels/embedding.ts";
import type { Tensor } from "../../kernels/tensor.ts";
import type { KernelBench, PreparedOp } from "./harness.ts";

const GPT2_VOCAB = 50257;
const CHAR_VOCAB = 65;

/** Deterministic pseudo-random ids below `vocab` (a linear congruential walk). */
function pseudoTokens(n: number, vocab: number, seed: number): Uint32Array {
  let state = seed >>> 0;
  return Uint32Array.from({ length: n }, () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state % vocab;
  });
}

/** Logits in [-4, 4) without a host round trip per element of a large tensor. */
function pseudoLogits(n: number, seed: number): Float32Array {
  const ids = pseudoTokens(n, 1 << 16, seed);
  return Float32Array.from(ids, (v) => v / 8192 - 4);
}

function releaser(gpu: Gpu, tensors: Tensor[]): () => void {
  return () => tensors.forEach((t) => gpu.release(t));
}

/** Forward + mean + in-place backward at [n, vocab] with `lanes` lanes per row. */
function crossEntropyOp(gpu: Gpu, n: number, vocab: number, lanes: number): PreparedOp {
  const logits = gpu.tensor([n, vocab], "f32", { label: "bench logits", data: pseudoLogits(n * vocab, 1) });
  const targets = gpu.tensor([n], "u32", { label: "bench targets", data: pseudoTokens(n, vocab, 2) });
  const losses = gpu.tensor([n], "f32", { label: "bench losses" });
  const lse = gpu.tensor([n], "f32", { label: "bench lse" });
  const loss = gpu.tensor([1], "f32", { label: "bench loss" });
  const count = gpu.tensor([1], "u32", { label: "bench count" });
  return {
    record(rec) {
      // In place overwrites the logits with gradients (all within (-1, 1)): the
      // next call's logits, which exercises the same work.
      crossEntropyForward(rec, { losses, lse, logits, targets, lanes });
      lossMean(rec, { out: loss, count, losses, targets, accumulate: true });
      crossEntropyBackward(rec, { dlogits: logits, logits, lse, targets, count, lanes });
    },
    release: releaser(gpu, [logits, targets, losses, lse, loss, count]),
  };
}

function crossEntropyBench(gpu: Gpu, vocab: number, rowsOnGpu: number, rowsOnCpu: number): KernelBench {
  // Stay within one storage binding (128 MiB on lavapipe) on any adapter.
  const fit = Math.floor(gpu.limits.maxStorageBufferBindingSize / (4 * vocab));
  const n = Math.min(gpu.info.fallback ? rowsOnCpu : rowsOnGpu, fit);
  const lanes = crossEntropyLanes(vocab, gpu.info.fallback);
  return {
    name: "cross_entropy",
    variant: `fwd+mean+bwd in place V=${vocab} L=${lanes}`,
    shape: [n, vocab],
    dtype: "f32",
    flops: 0,
    // Forward reads the logits, backward reads and overwrites them; targets, lse and losses are O(N).
    bytes: 12 * n * vocab + 24 * n,
    prepare: (gpu) => crossEntropyOp(gpu, n, vocab, lanes),
    naive: (gpu) => crossEntropyOp(gpu, n, vocab, 1),
  };
}

function embeddingForwardOp(gpu: Gpu, n: number, vocab: number, channels: number, vec4: boolean): PreparedOp {
  const tokens = gpu.tensor([n], "u32", { label: "bench tokens", data: pseudoTokens(n, vocab, 3) });
  const weight = gpu.tensor([vocab, channels], "f32", { label: "bench wte" });
  const out = gpu.tensor([n, channels], "f32", { label: "bench x" });
  return {
    record: (rec) => embeddingForward(rec, { out, tokens, weight, vec4 }),
    release: releaser(gpu, [tokens, weight, out]),
  };
}

function embeddingBackwardOp(
  gpu: Gpu,
  tokens: Uint32Array,
  vocab: number,
  channels: number,
  vec4: boolean,
): PreparedOp {
  const n = tokens.length;
  const index = new EmbeddingIndexBuffer(gpu, { n, vocabSize: vocab, label: "bench index" });
  index.update(tokens);
  const dout = gpu.tensor([n, channels], "f32", { label: "bench dx", data: pseudoLogits(n * channels, 4) });
  const dweight = gpu.tensor([vocab, channels], "f32", { label: "bench dwte" });
  return {
    record: (rec) => embeddingBackward(rec, { dweight, dout, index, vec4 }),
    release: () => {
      index.release();
      gpu.release(dout);
      gpu.release(dweight);
    },
  };
}

function embeddingBenches(gpu: Gpu, n: number, channels: number): KernelBench[] {
  // GPT-2's table in f32 is 154 MB, over lavapipe's 128 MiB binding: shrink V there.
  const vocab = Math.min(GPT2_VOCAB, Math.floor(gpu.limits.maxStorageBufferBindingSize / (4 * channels)));
  const backward = (v: number): KernelBench => {
    const tokens = pseudoTokens(n, v, 5);
    const unique = new Set(tokens).size;
    return {
      name: "embedding",
      variant: `backward V=${v} (U=${unique})`,
      shape: [n, v, channels],
      dtype: "f32",
      flops: 0,
      // dout read once; each touched dweight row read and written; the index (3N + 2 words).
      bytes: 4 * n * channels + 8 * unique * channels + 4 * (3 * n + 2),
      prepare: (gpu) => embeddingBackwardOp(gpu, tokens, v, channels, true),
      naive: (gpu) => embeddingBackwardOp(gpu, tokens, v, channels, false),
    };
  };
  return [
    {
      name: "embedding",
      variant: `forward V=${vocab}`,
      shape: [n, vocab, channels],
      dtype: "f32",
      flops: 0,
      bytes: 8 * n * channels + 4 * n,
      prepare: (gpu) => embeddingForwardOp(gpu, n, vocab, channels, true),
      naive: (gpu) => embeddingForwardOp(gpu, n, vocab, channels, false),
    },
    backward(vocab),
    backward(CHAR_VOCAB),
  ];
}

/**
 * Cross-entropy forward+backward at V = 50257 (GPT-2) and V = 65 (char level),
 * and the embedding forward and backward at N = 1024, C = 768. Naive twins:
 * one thread per row for cross-entropy (which is also the default layout on a
 * CPU adapter, so the ratio is 1 there), scalar instead of vec4 rows for the
 * embedding.
 *
 * @param gpu The device (a CPU fallback gets fewer cross-entropy rows at V = 50257).
 * @returns The cases.
 * @example
 * ```ts
 * for (const bench of lossBenches(gpu)) console.log(await runBench(gpu, bench, peak));
 * ```
 */
export function lossBenches(gpu: Gpu): KernelBench[] {
  return [
    crossEntropyBench(gpu, GPT2_VOCAB, 1024, 128),
    crossEntropyBench(gpu, CHAR_VOCAB, 1024, 1024),
    ...embeddingBenches(gpu, 1024, 768),
  ];
}
