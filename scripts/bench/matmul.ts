/**
 * Bench cases of the matmul kernels (compute-bound: reported in GFLOP/s against
 * the measured FMA peak, with the naive one-thread-per-output kernel as baseline):
 * square products in f32 and f16, and the three products of a linear layer.
 *
 * @module
 */

import type { Gpu } from "../../kernels/device.ts";
import { matmul, type MatmulArgs, matmulKernel, matmulNaive } from "../../kernels/matmul.ts";
import type { Recorder } from "../../kernels/recorder.ts";
import type { DType, Tensor } from "../../kernels/tensor.ts";
import { type KernelBench, type PreparedOp, timeSideBySide } from "./harness.ts";
import { peakFmaOp } from "./peak.ts";

/** One product: out[M, N] (+)= op(a)·op(b) with inner size K. */
interface Product {
  m: number;
  n: number;
  k: number;
  transposeA?: boolean;
  transposeB?: boolean;
  accumulate?: boolean;
  dtype: "f32" | "f16";
  /** Forces the texel (true) or tiled (false) kernel; default as matmul chooses. */
  texel?: boolean;
}

/** Uninitialised operands of `p` (timing does not depend on the values). */
function operands(gpu: Gpu, p: Product): { args: MatmulArgs; release: () => void } {
  const dtype: DType = p.dtype;
  const a = gpu.tensor(p.transposeA ? [p.k, p.m] : [p.m, p.k], dtype, { label: "bench a" });
  const b = gpu.tensor(p.transposeB ? [p.n, p.k] : [p.k, p.n], dtype, { label: "bench b" });
  const out = gpu.tensor([p.m, p.n], dtype, { label: "bench out" });
  const { transposeA, transposeB, accumulate, texel } = p;
  return {
    args: { out, a, b, transposeA, transposeB, accumulate, texel },
    release: () => [a, b, out].forEach((t: Tensor) => gpu.release(t)),
  };
}

function prepare(
  gpu: Gpu,
  p: Product,
  kernel: (rec: Recorder, args: MatmulArgs) => void,
): PreparedOp {
  const { args, release } = operands(gpu, p);
  return { record: (rec) => kernel(rec, args), release };
}

/** The kernel matmul runs for `p`. */
function kernelName(gpu: Gpu, p: Product): string {
  const { args, release } = operands(gpu, p);
  try {
    return matmulKernel(gpu, args);
  } finally {
    release();
  }
}

function bench(gpu: Gpu, title: string, p: Product, naive: boolean): KernelBench {
  return {
    name: "matmul",
    variant: `${title} ${kernelName(gpu, p)}`,
    shape: [p.m, p.n, p.k],
    dtype: p.dtype,
    flops: 2 * p.m * p.n * p.k,
    bytes: (p.m * p.k + p.k * p.n + (p.accumulate ? 2 : 1) * p.m * p.n) * (p.dtype === "f16" ? 2 : 4),
    prepare: (gpu) => prepare(gpu, p, matmul),
    naive: naive ? (gpu) => prepare(gpu, p, matmulNaive) : undefined,
  };
}

/**
 * Square products A·B at 512³ and 1024³ in f32 and f16, and a linear layer y = x·Wᵀ
 * (N rows, C inputs, OUT = 3·C outputs, as a fused QKV projection) with its
 * backward products dx = dy·W and dW += dyᵀ·x. On a CPU fallback the layer has
 * fewer rows and the naive kernel is skipped at 1024³ (about 10 s a call there),
 * so the whole set stays near a minute.
 *
 * @param gpu The device.
 * @returns The cases, each with the naive ratio where it is timed.
 */
export function matmulBenches(gpu: Gpu): KernelBench[] {
  const cpu = gpu.info.fallback;
  const cases: KernelBench[] = [];
  for (const size of [512, 1024]) {
    for (const dtype of ["f32", "f16"] as const) {
      if (dtype === "f16" && !gpu.features.f16) continue;
      const p: Product = { m: size, n: size, k: size, dtype };
      cases.push(bench(gpu, "A·B", p, !cpu || size <= 512));
      // Software adapters run the texel kernel; the tiled one beside it shows the gain.
      if (cpu) cases.push(bench(gpu, "A·B", { ...p, texel: false }, false));
    }
  }
  const [rows, c, out] = [cpu ? 128 : 1024, 384, 1152];
  cases.push(
    bench(gpu, "x·Wᵀ", { m: rows, n: out, k: c, transposeB: true, dtype: "f32" }, true),
    bench(gpu, "dx=dy·W", { m: rows, n: c, k: out, dtype: "f32" }, true),
    bench(
      gpu,
      "dW+=dyᵀ·x",
      { m: out, n: c, k: rows, transposeA: true, accumulate: true, dtype: "f32" },
      true,
    ),
  );
  return cases;
}

/** Square products' share of the FMA peak, each timed side by side with the peak kernel. */
export interface MatmulVsPeak {
  /** Edge of the square product (512, 1024). */
  size: number;
  /** f32 GFLOP/s over the FMA peak's (the target on a CPU fallback is 0.25 or more). */
  f32_peak_fraction: number;
  /** f16 GFLOP/s over the FMA peak's, where the adapter has f16. */
  f16_peak_fraction?: number;
  /** f16 GFLOP/s over f32's (the target on an NVIDIA GPU is 1.5 or more). */
  f16_over_f32?: number;
}

/**
 * The matmul targets measured side by side: A·B at 512³ and 1024³ in f32 (and f16)
 * and the peak FMA kernel in rotating order, every round's times divided by the
 * peak kernel's of the same round, so a slow spell of a shared host slows both
 * alike (separate medians, minutes apart, swung the 512³ share from 19% to 33%).
 *
 * @param gpu The device.
 * @returns A row per size.
 */
export async function matmulVsPeak(gpu: Gpu): Promise<MatmulVsPeak[]> {
  const peak = peakFmaOp(gpu);
  const sizes = [512, 1024];
  const dtypes = gpu.features.f16 ? (["f32", "f16"] as const) : (["f32"] as const);
  const ops: Record<string, PreparedOp> = {};
  for (const size of sizes) {
    for (const dtype of dtypes) {
      ops[`${size} ${dtype}`] = prepare(gpu, { m: size, n: size, k: size, dtype }, matmul);
    }
  }
  try {
    const ratios = await timeSideBySide(gpu, peak.op, ops, 7);
    // A ratio is t(matmul) / t(peak): the share of the peak is its FLOPs over the peak's, over the ratio.
    const share = (size: number, dtype: string) => 2 * size ** 3 / peak.flops / ratios[`${size} ${dtype}`];
    return sizes.map((size) => {
      const f32 = share(size, "f32");
      if (!gpu.features.f16) return { size, f32_peak_fraction: f32 };
      const f16 = share(size, "f16");
      return { size, f32_peak_fraction: f32, f16_peak_fraction: f16, f16_over_f32: f16 / f32 };
    });
  } finally {
    peak.op.release();
    for (const op of Object.values(ops)) op.release();
  }
}
