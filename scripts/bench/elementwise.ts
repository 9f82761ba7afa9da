/**
 * Bench cases of the elementwise kernels (memory-bound: reported in GB/s).
 *
 * @module
 */

import type { Gpu } from "../../kernels/device.ts";
import { add, cast } from "../../kernels/elementwise.ts";
import type { KernelBench } from "./harness.ts";

/**
 * Residual add and f32->f16 cast at a training-sized activation.
 *
 * @param gpu The device (a CPU fallback gets smaller shapes).
 */
export function elementwiseBenches(gpu: Gpu): KernelBench[] {
  const n = gpu.info.fallback ? 1 << 20 : 1 << 24;
  return [
    {
      name: "add",
      variant: "residual x += y (f32)",
      shape: [n],
      dtype: "f32",
      flops: 0,
      bytes: 12 * n,
      prepare(gpu) {
        const x = gpu.tensor([n], "f32", { label: "bench x" });
        const y = gpu.tensor([n], "f32", { label: "bench y" });
        return {
          record: (rec) => add(rec, { out: x, a: x, b: y }),
          release: () => [x, y].forEach((t) => gpu.release(t)),
        };
      },
    },
    {
      name: "cast",
      variant: "f32 -> f16",
      shape: [n],
      dtype: "f16",
      flops: 0,
      bytes: 6 * n,
      prepare(gpu) {
        const x = gpu.tensor([n], "f32", { label: "bench x" });
        const h = gpu.tensor([n], "f16", { label: "bench h" });
        return {
          record: (rec) => cast(rec, { out: h, x }),
          release: () => [x, h].forEach((t) => gpu.release(t)),
        };
      },
    },
  ];
}
