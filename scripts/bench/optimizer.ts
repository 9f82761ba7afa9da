/**
 * Bench cases of the optimizer kernels over the flat parameter buffer (memory-
 * bound: reported in GB/s of compulsory traffic): the global grad-norm reduction
 * and the fused AdamW update, each beside a naive twin (one workgroup for the
 * norm; one thread per parameter, scalar loads, for AdamW).
 *
 * @module
 */

import { AdamW, buildDecayMask } from "../../kernels/adamw.ts";
import type { Gpu } from "../../kernels/device.ts";
import { GradNorm } from "../../kernels/reduce.ts";
import type { Tensor } from "../../kernels/tensor.ts";
import { declare } from "../../kernels/wgsl.ts";
import type { KernelBench, PreparedOp } from "./harness.ts";

const HYPER = { lr: 6e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, maxGradNorm: 1, step: 1 };

/**
 * Naive grad norm: one workgroup strides over the whole buffer with scalar loads
 * and folds its 256 sums. Deterministic too, but uses one compute unit.
 */
function naiveGradNorm(gpu: Gpu, n: number): PreparedOp {
  const grads = gpu.tensor([n], "f32", { label: "bench grads" });
  const out = gpu.tensor([1], "f32", { label: "bench normSquared" });
  const { wgsl, bindings } = declare([{ name: "grads", tensor: grads }, {
    name: "out",
    tensor: out,
    write: true,
  }]);
  const code = `${wgsl}
var<workgroup> scratch: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3u) {
  var s = 0.0;
  for (var i = lid.x; i < ${n}u; i += 256u) { let g = grads[i]; s += g * g; }
  scratch[lid.x] = s;
  workgroupBarrier();
  for (var stride = 128u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) { scratch[lid.x] += scratch[lid.x + stride]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) { out[0] = scratch[0]; }
}`;
  const pipeline = gpu.pipelines.get("naive grad norm", code);
  return {
    record: (rec) => rec.dispatch(pipeline, bindings, 1),
    release: () => [grads, out].forEach((t) => gpu.release(t)),
  };
}

/** Flat optimizer buffers of n parameters, half of them decayed, with a finite norm². */
function optimizerState(gpu: Gpu, n: number) {
  const tensor = (label: string) => gpu.tensor([n], "f32", { label: `bench ${label}` });
  const words = buildDecayMask(n, [{ offset: 0, length: n >> 1, decay: true }]);
  const state = {
    params: tensor("params"),
    grads: tensor("grads"),
    m: tensor("m"),
    v: tensor("v"),
    decayMask: gpu.tensor([words.length], "u32", { label: "bench decay mask", data: words }),
    normSquared: gpu.tensor([1], "f32", { label: "bench normSquared", data: [4] }),
  };
  const release = () => Object.values(state).forEach((t: Tensor) => gpu.release(t));
  return { state, release };
}

/** AdamW over fresh buffers, `width` parameters per thread (1: the naive layout). */
function adamwOp(gpu: Gpu, n: number, width: 1 | 4): PreparedOp {
  const adamw = new AdamW(gpu, n, { width });
  const { state, release } = optimizerState(gpu, n);
  return {
    record: (rec) => adamw.record(rec, { ...state, hyper: HYPER }),
    release: () => {
      adamw.release();
      release();
    },
  };
}

/**
 * Grad norm and AdamW over a GPT-2-small-sized parameter buffer (124M floats), or
 * 4M on a CPU fallback.
 *
 * @param gpu The device (a CPU fallback gets a smaller n).
 * @returns The cases.
 */
export function optimizerBenches(gpu: Gpu): KernelBench[] {
  const n = gpu.info.fallback ? 1 << 22 : 124_000_000;
  return [
    {
      name: "grad norm",
      variant: "two-stage, fixed vec4 slices per workgroup",
      shape: [n],
      dtype: "f32",
      flops: 0,
      bytes: 4 * n + 4,
      prepare(gpu) {
        const gradNorm = new GradNorm(gpu, n);
        const grads = gpu.tensor([n], "f32", { label: "bench grads" });
        const out = gpu.tensor([1], "f32", { label: "bench normSquared" });
        return {
          record: (rec) => gradNorm.record(rec, { out, grads }),
          release: () => {
            gradNorm.release();
            [grads, out].forEach((t) => gpu.release(t));
          },
        };
      },
      naive: (gpu) => naiveGradNorm(gpu, n),
    },
    {
      name: "adamw",
      variant: "fused clip + unscale + decay mask, vec4 per thread",
      shape: [n],
      dtype: "f32",
      flops: 0,
      // Read params, grads, m, v and the mask bits; write params, m, v.
      bytes: 28 * n + Math.ceil(n / 32) * 4,
      prepare: (gpu) => adamwOp(gpu, n, 4),
      naive: (gpu) => adamwOp(gpu, n, 1),
    },
  ];
}
