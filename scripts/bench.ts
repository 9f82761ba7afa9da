/**
 * `deno task bench`: kernel timings against the adapter's measured peak and a
 * naive kernel of the same op. `--json FILE` writes the same figures.
 *
 * @module
 */

import { requestGpu } from "../kernels/device.ts";
import { type KernelBench, type KernelResult, runBench } from "./bench/harness.ts";
import { measurePeak } from "./bench/peak.ts";
import { attentionBenches, type AttentionVsMatmul, attentionVsMatmul } from "./bench/attention.ts";
import { type AttentionPlanResult, attentionPlanSweep } from "./bench/attention_plans.ts";
import { decodeAttentionBenches } from "./bench/decode.ts";
import { elementwiseBenches } from "./bench/elementwise.ts";
import { lossBenches } from "./bench/loss.ts";
import { matmulBenches, type MatmulVsPeak, matmulVsPeak } from "./bench/matmul.ts";
import { type MatmulTileResult, matmulTileSweep, tileSweepTable } from "./bench/matmul_tiles.ts";
import { normBenches } from "./bench/norm.ts";
import { optimizerBenches } from "./bench/optimizer.ts";
import { sampleBenchmarks, type SampleResult } from "./bench/sample.ts";
import { trainBenchmarks, type TrainResult } from "./bench/train.ts";
import { parseFlags, runCli, UsageError } from "./cli.ts";

const PARTS = ["kernels", "train", "sample"];

await runCli(async () => {
  const flags = parseFlags(Deno.args, "deno task bench", {
    json: { type: "string", help: "Also write the results as JSON to this file" },
    only: { type: "string", help: `Run one part: ${PARTS.join("|")}` },
    filter: { type: "string", help: "Only cases whose name or variant contains this text" },
    iterations: { type: "string", help: "Timed calls per case (median reported)", default: "5" },
  });
  if (!flags) return;
  const only = flags.only as string | undefined;
  if (only && !PARTS.includes(only)) {
    throw new UsageError(`Unknown part "${only}" for --only; choose ${PARTS.join(", ")}`);
  }
  const iterations = Number(flags.iterations);
  if (!Number.isInteger(iterations) || iterations < 1) {
    throw new UsageError(`--iterations must be a positive integer, got "${flags.iterations}"`);
  }

  const gpu = await requestGpu();
  console.log(`adapter: ${gpu.info.name} (${gpu.info.backend}${gpu.info.fallback ? ", software" : ""})`);
  console.log(
    `features: f16 ${gpu.features.f16 ? "on" : "off"}, timestamps ${gpu.features.timestamps ? "on" : "off"}`,
  );
  const peak = await measurePeak(gpu);
  console.log(`peak: FMA ${peak.fma_gflops.toFixed(1)} GFLOP/s, copy ${peak.copy_gbs.toFixed(1)} GB/s\n`);

  const filter = (flags.filter as string | undefined)?.toLowerCase();
  const kernels: KernelResult[] = [];
  let attention: AttentionVsMatmul | null = null;
  let matmulPeak: MatmulVsPeak[] | null = null;
  let matmulTiles: MatmulTileResult[] = [];
  let attentionPlans: AttentionPlanResult[] = [];
  if (!only || only === "kernels") {
    const benches: KernelBench[] = [
      ...matmulBenches(gpu),
      ...attentionBenches(gpu),
      ...decodeAttentionBenches(gpu),
      ...elementwiseBenches(gpu),
      ...normBenches(gpu),
      ...lossBenches(gpu),
      ...optimizerBenches(gpu),
    ].filter((b) => !filter || `${b.name} ${b.variant}`.toLowerCase().includes(filter));
    console.log(header());
    for (const bench of benches) {
      const result = await runBench(gpu, bench, peak, { iterations });
      kernels.push(result);
      console.log(row(result));
    }
    if (!filter || "matmul".includes(filter) || filter.includes("matmul")) {
      matmulPeak = await matmulVsPeak(gpu);
      const shares = matmulPeak.map((r) => `${r.size}³ f32 ${(100 * r.f32_peak_fraction).toFixed(1)}%`);
      const f16 = matmulPeak.flatMap((r) =>
        r.f16_over_f32 === undefined ? [] : [`${r.size}³ ${r.f16_over_f32.toFixed(2)}x`]
      );
      console.log(
        `\nmatmul vs the FMA peak, side by side: ${shares.join(", ")} of peak (target: 25% or more on a CPU` +
          ` fallback, 20% on a GPU)${f16.length ? `; f16 over f32: ${f16.join(", ")}` : ""}`,
      );
      matmulTiles = gpu.info.fallback ? [] : await matmulTileSweep(gpu);
      if (matmulTiles.length) {
        console.log("\ntiled matmul blockings, A·B, share of the FMA peak side by side:");
        for (const line of tileSweepTable(matmulTiles)) console.log(line);
      }
    }
    if (!filter || "attention".includes(filter) || filter.includes("attention")) {
      attention = await attentionVsMatmul(gpu);
      console.log(
        `\nattention vs a matmul of the same FLOPs, side by side: forward ${
          attention.forward.toFixed(2)
        }x, ` +
          `backward ${attention.backward.toFixed(2)}x (target: 2x or less)`,
      );
      attentionPlans = gpu.info.fallback ? [] : await attentionPlanSweep(gpu);
      if (attentionPlans.length) {
        console.log("\nattention plans, time over a matmul of the same FLOPs side by side:");
        console.log(`${"plan".padEnd(36)}${"forward".padStart(10)}${"backward".padStart(10)}`);
        for (const r of attentionPlans) {
          console.log(
            `${r.plan.padEnd(36)}${`${r.forward.toFixed(2)}x`.padStart(10)}${
              `${r.backward.toFixed(2)}x`.padStart(10)
            }`,
          );
        }
      }
    }
  }
  let train: TrainResult[] = [];
  if (!only || only === "train") {
    console.log(
      "\ntraining step                                  ms/iter    tokens/s  dispatches  submits  copies  created  cpu ms   vs GPU ms",
    );
    train = await trainBenchmarks(gpu);
    for (const r of train) {
      const created = Object.values(r.created_after_first_step).reduce((a, b) => a + b, 0);
      console.log(
        [
          r.config.padEnd(44),
          r.ms_per_iter.toFixed(1).padStart(9),
          r.tokens_per_s.toFixed(0).padStart(11),
          r.dispatches_per_step.toFixed(0).padStart(11),
          r.submits_per_step.toFixed(0).padStart(8),
          r.copies_per_step.toFixed(0).padStart(7),
          String(created).padStart(8),
          r.cpu_encode_ms.toFixed(1).padStart(7),
          (r.overhead_ratio === null ? "-" : `${r.overhead_ratio.toFixed(2)}x`).padStart(11),
        ].join(" "),
      );
      const total = Object.values(r.breakdown).reduce((a, b) => a + b, 0);
      const parts = Object.entries(r.breakdown).sort((a, b) => b[1] - a[1])
        .map(([family, ms]) => `${family} ${ms.toFixed(1)} ms (${(100 * ms / total).toFixed(0)}%)`);
      if (parts.length) console.log(`  GPU time by kernel family (and copies): ${parts.join(", ")}`);
      if (r.tuning) {
        console.log(
          `  tuned ${r.tuning.calls} kernel calls in ${
            r.tuning.seconds.toFixed(1)
          } s; timed alone, they ran ` +
            `${r.tuning.speedup.toFixed(2)}x as fast as untuned`,
        );
      }
    }
  }
  let sample: SampleResult[] = [];
  if (!only || only === "sample") {
    console.log(
      "\ngeneration (tokens/s)        prefill    decode (KV cache)    recompute    decode/recompute   per decoding step",
    );
    sample = await sampleBenchmarks(gpu);
    for (const r of sample) {
      console.log(
        `block ${String(r.block_size).padEnd(5)} ${r.model.padEnd(14)} ${
          r.prefill_tokens_per_s.toFixed(1).padStart(9)
        } ` +
          `${r.decode_tokens_per_s.toFixed(1).padStart(20)} ${
            r.recompute_tokens_per_s.toFixed(2).padStart(12)
          } ` +
          `${(r.decode_tokens_per_s / r.recompute_tokens_per_s).toFixed(1).padStart(18)}x` +
          `   ${r.decode_dispatches_per_step} dispatches, ${r.decode_copies_per_step} copies` +
          (r.tuning ? `; kernels tuned (${r.tuning.calls} calls, ${r.tuning.seconds.toFixed(1)} s)` : ""),
      );
    }
  }
  if (flags.json) {
    const report = {
      adapter: { ...gpu.info, limits: gpu.limits, enabled: gpu.features },
      peak,
      kernels,
      matmul_vs_peak: matmulPeak,
      matmul_tiles: matmulTiles,
      attention_vs_matmul: attention,
      attention_plans: attentionPlans,
      train,
      sample,
    };
    await writeReport(flags.json as string, report);
    console.log(`\nwrote ${flags.json}`);
  }
});

function header(): string {
  return [
    "op".padEnd(14),
    "variant".padEnd(30),
    "shape".padEnd(18),
    "dtype".padEnd(6),
    "ms".padStart(10),
    "GFLOP/s".padStart(9),
    "GB/s".padStart(8),
    "peak".padStart(7),
    "vs naive".padStart(9),
  ].join(" ");
}

function row(r: KernelResult): string {
  return [
    r.name.padEnd(14),
    r.variant.slice(0, 30).padEnd(30),
    r.shape.join("x").padEnd(18),
    r.dtype.padEnd(6),
    r.ms.toFixed(3).padStart(10),
    (r.gflops === undefined ? "" : r.gflops.toFixed(2)).padStart(9),
    (r.gbs === undefined ? "" : r.gbs.toFixed(2)).padStart(8),
    `${(100 * r.peak_fraction).toFixed(1)}%`.padStart(7),
    (r.naive_ratio === undefined ? "" : `${r.naive_ratio.toFixed(2)}x`).padStart(9),
  ].join(" ");
}

async function writeReport(path: string, report: unknown): Promise<void> {
  try {
    await Deno.writeTextFile(path, JSON.stringify(report, null, 2) + "\n");
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      throw new UsageError(`Cannot write "${path}": the bench task may write inside the project or /tmp`);
    }
    throw error;
  }
}
