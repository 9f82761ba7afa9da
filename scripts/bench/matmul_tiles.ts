/**
 * The tiled matmul's blockings timed against each other on a GPU, side by side
 * with the FMA peak kernel, so one run on a new GPU says which blocking
 * `chooseMatmulTile` should pick there. `deno task bench` runs it on GPUs only:
 * software adapters take the texel kernel, and a 4096³ product alone would take
 * minutes there.
 *
 * @module
 */

import type { Gpu } from "../../kernels/device.ts";
import { GpuError } from "../../kernels/errors.ts";
import { matmul, MATMUL_TILES, type MatmulTile } from "../../kernels/matmul.ts";
import type { Tensor } from "../../kernels/tensor.ts";
import { type PreparedOp, timeSideBySide } from "./harness.ts";
import { peakFmaOp } from "./peak.ts";

/**
 * The blockings the sweep times: the two a GPU gets now, bigger ones with more
 * threads a workgroup (each within 16 KiB of workgroup memory), some of them
 * prefetching the next slab into registers or splitting K, and, for f16,
 * blockings that sum products in f16 (the f16-over-f32 target needs f16
 * arithmetic: f16 widened to f32 on the way in runs at f32's rate).
 */
export const SWEEP_TILES: Readonly<Record<string, Readonly<MatmulTile>>> = Object.freeze({
  "64x64/16 8x8 (large)": MATMUL_TILES.large,
  "32x32/16 4x4 (small)": MATMUL_TILES.small,
  "128x128/8 8x8": { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 },
  "128x64/16 8x8": { bm: 128, bn: 64, bk: 16, tm: 8, tn: 8 },
  "64x128/16 8x8": { bm: 64, bn: 128, bk: 16, tm: 8, tn: 8 },
  "64x64/16 4x4": { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
  // The next slab's loads issued before this slab's FMAs (see MatmulTile.prefetch).
  "64x64/16 8x8 prefetch": { ...MATMUL_TILES.large, prefetch: true },
  "128x128/8 8x8 prefetch": { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8, prefetch: true },
  "32x32/16 4x4 prefetch": { ...MATMUL_TILES.small, prefetch: true },
  // K split in 4 ranges, a workgroup each, then summed (see MatmulTile.splitK): 4x the workgroups.
  "64x64/16 8x8 split 4": { ...MATMUL_TILES.large, splitK: 4 },
  "64x64/16 4x4 split 4": { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4, splitK: 4 },
  "64x64/16 8x8 prefetch split 4": { ...MATMUL_TILES.large, prefetch: true, splitK: 4 },
  // f16 only: products summed in f16 a slab at a time (see MatmulTile.f16Sums).
  "64x64/16 8x8 f16 sums": { ...MATMUL_TILES.large, f16Sums: true },
  "128x64/16 8x8 f16 sums": { bm: 128, bn: 64, bk: 16, tm: 8, tn: 8, f16Sums: true },
  "64x64/32 8x8 f16 sums": { bm: 64, bn: 64, bk: 32, tm: 8, tn: 8, f16Sums: true },
  "64x64/16 8x8 f16 sums prefetch": { ...MATMUL_TILES.large, f16Sums: true, prefetch: true },
});

/** One blocking at one square size and dtype. */
export interface MatmulTileResult {
  /** The blocking's name in {@link SWEEP_TILES}. */
  tile: string;
  /** Edge of the square product A·B. */
  size: number;
  dtype: "f32" | "f16";
  /** GFLOP/s over the FMA peak's, timed side by side. */
  peak_fraction: number;
}

/**
 * Times every blocking of {@link SWEEP_TILES} on square products A·B, f32 and
 * (where the adapter has it) f16, in rotating rounds with the FMA peak kernel.
 *
 * @param gpu The device.
 * @param sizes Edges of the products: by default the targets' 512 and 1024, and 4096, a size that fills a large GPU.
 * @returns A row per blocking, size and dtype that the device can run.
 */
export async function matmulTileSweep(
  gpu: Gpu,
  sizes: readonly number[] = [512, 1024, 4096],
): Promise<MatmulTileResult[]> {
  const peak = peakFmaOp(gpu);
  const dtypes = gpu.features.f16 ? (["f32", "f16"] as const) : (["f32"] as const);
  const tensors: Tensor[] = [];
  const ops: Record<string, PreparedOp> = {};
  const cases: Record<string, Omit<MatmulTileResult, "peak_fraction">> = {};
  try {
    for (const size of sizes) {
      for (const dtype of dtypes) {
        const [a, b, out] = ["a", "b", "out"].map((name) =>
          gpu.tensor([size, size], dtype, { label: `sweep ${name} ${size} ${dtype}` })
        );
        tensors.push(a, b, out);
        for (const [name, tile] of Object.entries(SWEEP_TILES)) {
          const record = (rec: Parameters<PreparedOp["record"]>[0]) => matmul(rec, { out, a, b, tile });
          if (!usable(gpu, record)) continue;
          const key = `${name} ${size} ${dtype}`;
          ops[key] = { record, release: () => {} };
          cases[key] = { tile: name, size, dtype };
        }
      }
    }
    const ratios = await timeSideBySide(gpu, peak.op, ops, 5);
    return Object.entries(cases).map(([key, c]) => ({
      ...c,
      peak_fraction: 2 * c.size ** 3 / peak.flops / ratios[key],
    }));
  } finally {
    peak.op.release();
    for (const t of tensors) gpu.release(t);
  }
}

/** Whether the device takes the blocking (its threads and workgroup memory fit). */
function usable(gpu: Gpu, record: PreparedOp["record"]): boolean {
  const rec = gpu.recorder({ label: "sweep check" });
  try {
    record(rec);
    return true;
  } catch (error) {
    if (error instanceof GpuError) return false;
    throw error;
  } finally {
    rec.finish();
  }
}

/**
 * The sweep as a table: a row per blocking, a column per size and dtype, each
 * cell its share of the FMA peak.
 *
 * @param results What {@link matmulTileSweep} returned.
 * @returns The lines to print.
 */
export function tileSweepTable(results: readonly MatmulTileResult[]): string[] {
  const columns = [...new Set(results.map((r) => `${r.size}³ ${r.dtype}`))];
  const tiles = [...new Set(results.map((r) => r.tile))];
  const cell = (tile: string, column: string) => {
    const r = results.find((r) => r.tile === tile && `${r.size}³ ${r.dtype}` === column);
    return (r ? `${(100 * r.peak_fraction).toFixed(1)}%` : "-").padStart(12);
  };
  return [
    `${"blocking".padEnd(34)}${columns.map((c) => c.padStart(12)).join("")}`,
    ...tiles.map((tile) => `${tile.padEnd(34)}${columns.map((c) => cell(tile, c)).join("")}`),
  ];
}
