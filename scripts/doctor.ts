/**
 * `deno task doctor`: what WebGPU adapter this machine has, what it offers, and
 * whether it computes correctly in f32 and f16.
 *
 * @module
 */

import { requestGpu } from "../kernels/device.ts";
import { formatBytes } from "../kernels/errors.ts";
import { runSelfTest, type SelfTestResult } from "../kernels/selftest.ts";
import { GpuTimer } from "../kernels/timer.ts";
import { parseFlags, runCli, UsageError } from "./cli.ts";

const REQUIRABLE = ["shader-f16", "timestamp-query"];

await runCli(async () => {
  const flags = parseFlags(Deno.args, "deno task doctor", {
    require: {
      type: "string",
      help: "Fail unless these features work, comma-separated: shader-f16,timestamp-query",
    },
    json: { type: "boolean", help: "Print the report as JSON" },
  });
  if (!flags) return;
  const required = flags.require ? String(flags.require).split(",").map((s) => s.trim()).filter(Boolean) : [];
  for (const feature of required) {
    if (!REQUIRABLE.includes(feature)) {
      throw new UsageError(
        `Unknown feature "${feature}" for --require; choose from ${REQUIRABLE.join(", ")}`,
      );
    }
  }

  const gpu = await requestGpu({
    f16: required.includes("shader-f16") ? "require" : "auto",
    timestamps: required.includes("timestamp-query") ? "require" : "auto",
  });
  const f32 = await runSelfTest(gpu, "f32");
  const f16: SelfTestResult | null = gpu.features.f16 ? await runSelfTest(gpu, "f16") : null;
  const offered = (feature: string) => gpu.info.features.includes(feature);
  const report = {
    adapter: gpu.info,
    features: {
      "shader-f16": gpu.features.f16
        ? "on"
        : offered("shader-f16")
        ? `unusable: ${gpu.f16Problem}`
        : "absent",
      "timestamp-query": gpu.features.timestamps ? "on" : "absent",
      "subgroups": gpu.features.subgroups ? "on" : "absent",
    },
    limits: gpu.limits,
    loopLimit: Number.isFinite(gpu.loopLimit) ? gpu.loopLimit : null,
    selfTest: { f32, f16 },
  };
  if (flags.json) {
    console.log(JSON.stringify(report, null, 2));
  } else {
    const { adapter, limits } = report;
    const rows: [string, string][] = [
      ["adapter", adapter.name],
      ["vendor", adapter.vendor + (adapter.architecture ? `, ${adapter.architecture}` : "")],
      ["backend", adapter.backend],
      ["software", adapter.fallback ? "yes: a CPU fallback, correct but slow" : "no: a hardware GPU"],
      ...Object.entries(report.features).map(([name, state]) => [name, state] as [string, string]),
      ["timing", gpu.features.timestamps ? "GPU timestamps" : GpuTimer.unavailableReason(gpu)],
      ["max buffer", formatBytes(limits.maxBufferSize)],
      ["max binding", formatBytes(limits.maxStorageBufferBindingSize)],
      ["workgroup mem", formatBytes(limits.maxComputeWorkgroupStorageSize)],
      ["invocations", `${limits.maxComputeInvocationsPerWorkgroup} per workgroup`],
      ["workgroups", `${limits.maxComputeWorkgroupsPerDimension} per dimension`],
      [
        "loop limit",
        Number.isFinite(gpu.loopLimit) ? `${gpu.loopLimit} iterations per invocation` : "none found",
      ],
      ["self-test f32", describe(f32)],
      [
        "self-test f16",
        f16 ? describe(f16) : gpu.f16Problem ? `FAILED: ${gpu.f16Problem}` : "skipped (no shader-f16)",
      ],
    ];
    for (const [key, value] of rows) console.log(`${key.padEnd(16)}${value}`);
  }
  if (!f32.ok) {
    throw new Error(`The f32 self-test failed: ${f32.reason}; this adapter computes wrong answers`);
  }
  if (gpu.f16Problem && !flags.json) {
    console.log("note: f16 kernels are disabled on this adapter; training runs in f32");
  }
});

function describe(result: SelfTestResult): string {
  return result.ok
    ? `ok (max relative error ${result.maxError.toExponential(1)})`
    : `FAILED: ${result.reason}`;
}
