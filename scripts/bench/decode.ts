/**
 * Bench case of a decoding step's attention over a long KV cache: the storage
 * kernel in chunks of 256 cached positions (flash-decoding) against one
 * workgroup per head over the whole cache, what it did before it was split.
 * Memory-bound: each step reads the cached keys and values once.
 *
 * @module
 */

import { cachedAttention } from "../../kernels/cached_attention.ts";
import type { Gpu } from "../../kernels/device.ts";
import type { Tensor } from "../../kernels/tensor.ts";
import type { KernelBench, PreparedOp } from "./harness.ts";

/**
 * Cached attention at one sequence and a cache nearly full: Llama-style grouped
 * heads (32 query heads on 8 kv heads) on a GPU, fewer on a CPU fallback. The
 * cache stays under 3968 positions so the one-workgroup baseline's scores (with
 * its q and partial sums) fit the 16 KiB of workgroup memory every adapter has.
 *
 * @param gpu The device.
 * @returns The case, with the one-workgroup-per-head kernel as its naive baseline.
 */
export function decodeAttentionBenches(gpu: Gpu): KernelBench[] {
  const [NH, NKV, HS, Tmax] = gpu.info.fallback ? [4, 2, 64, 2000] : [32, 8, 64, 3900];
  const cacheBytes = Tmax * NKV * HS * 4;
  const op = (chunk?: number) => (gpu: Gpu): PreparedOp => {
    const fill = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * seed));
    const tensors: Tensor[] = [
      gpu.tensor([1, Tmax, NKV * HS], "f32", { label: "bench k cache", data: fill(Tmax * NKV * HS, 0.37) }),
      gpu.tensor([1, Tmax, NKV * HS], "f32", { label: "bench v cache", data: fill(Tmax * NKV * HS, 0.73) }),
      gpu.tensor([1, 1, (NH + 2 * NKV) * HS], "f32", {
        label: "bench token qkv",
        data: fill((NH + 2 * NKV) * HS, 1.1),
      }),
      gpu.tensor([1, NH * HS], "f32", { label: "bench token out" }),
      gpu.tensor([1], "u32", { label: "bench position", data: [Tmax - 1] }),
    ];
    const [kCache, vCache, qkv, out, position] = tensors;
    const args = { out, qkv, kCache, vCache, position, nHead: NH, nKvHead: NKV, texels: false };
    return {
      record: (rec) => cachedAttention(rec, { ...args, chunk: chunk ?? Tmax }),
      release: () => tensors.forEach((t) => gpu.release(t)),
    };
  };
  return [{
    name: "cached attention",
    variant: "decode, chunks of 256 (naive: a workgroup per head)",
    shape: [1, Tmax, NH, HS],
    dtype: "f32",
    flops: 0,
    bytes: 2 * cacheBytes,
    prepare: op(256),
    naive: op(),
  }];
}
