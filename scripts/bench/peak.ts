/**
 * The adapter's peak, measured rather than looked up: a register-only FMA
 * kernel (independent chains, so latency hides behind throughput) and a vec4
 * copy kernel, which on a software adapter also runs reading a staged texture
 * (there a storage load is a loop over the SIMD lanes, and kernels that read
 * textures stream faster than a storage copy does). Kernel results are reported
 * as a share of these.
 *
 * @module
 */

import type { Gpu } from "../../kernels/device.ts";
import type { Binding } from "../../kernels/pipeline.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "../../kernels/recorder.ts";
import { stageTexels, texelReaderWgsl } from "../../kernels/texels.ts";
import type { Peak, PreparedOp } from "./harness.ts";
import { timeOp } from "./harness.ts";

// 16 independent chains, 8 steps unrolled per loop trip: on llvmpipe a loop trip
// costs about as much as 16 vector FMAs, and 8 chains leave FMA latency exposed,
// so fewer of either measures the loop rather than the FMA units (33 GFLOP/s
// instead of 58 on the 2-core CI machine).
const CHAINS = 16;
const UNROLL = 8;
const STEPS = 256;

/**
 * The register-only FMA kernel {@link measurePeak} times, at the size it uses on
 * `gpu`, for timing other ops side by side with it.
 *
 * @param gpu The device.
 * @returns The op and its floating-point operations per call.
 */
export function peakFmaOp(gpu: Gpu): { op: PreparedOp; flops: number } {
  return fmaOp(gpu, gpu.info.fallback ? 1 << 15 : 1 << 22);
}

function fmaOp(gpu: Gpu, threads: number): { op: PreparedOp; flops: number } {
  const out = gpu.tensor([threads], "f32", { label: "peak fma out" });
  const chains = Array.from({ length: CHAINS }, (_, c) => `var a${c} = f32(i) * ${(c + 1) * 1e-7};`).join(
    "\n  ",
  );
  const step = Array.from({ length: CHAINS }, (_, c) => `a${c} = fma(a${c}, 0.9999, 0.0001);`).join(" ");
  const steps = Array.from({ length: UNROLL }, () => step).join("\n    ");
  const sum = Array.from({ length: CHAINS }, (_, c) => `a${c}`).join(" + ");
  const code = `@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WGSL_LINEAR_WORKGROUP} * 256u + lid.x;
  ${chains}
  for (var s = 0u; s < ${STEPS / UNROLL}u; s++) {
    ${steps}
  }
  out[i] = ${sum};
}`;
  const pipeline = gpu.pipelines.get("peak fma", code);
  return {
    op: {
      record: (rec) => rec.dispatch(pipeline, [out], grid(gpu, threads / 256)),
      release: () => gpu.release(out),
    },
    flops: 2 * CHAINS * STEPS * threads,
  };
}

/** A vec4 copy of `floats` floats, reading storage or (`texels`) a texture staged before timing. */
function copyOp(gpu: Gpu, floats: number, texels: boolean): { op: PreparedOp; bytes: number } {
  const src = gpu.tensor([floats], "f32", { label: "peak copy src" });
  const dst = gpu.tensor([floats], "f32", { label: "peak copy dst" });
  const vectors = floats / 4;
  let read = `@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
fn load(i: u32) -> vec4<f32> { return src[i]; }`;
  let source: Binding = src;
  if (texels) {
    const rec = gpu.recorder();
    const staged = stageTexels(rec, src, "peak copy src");
    rec.submit();
    read = texelReaderWgsl("load", 0, staged, { fixedWidth: true });
    source = staged.view;
  }
  const code = `${read}
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WGSL_LINEAR_WORKGROUP} * 256u + lid.x;
  if (i >= ${vectors}u) { return; }
  dst[i] = load(i);
}`;
  const pipeline = gpu.pipelines.get(texels ? "peak copy from texels" : "peak copy", code);
  return {
    op: {
      record: (rec) => rec.dispatch(pipeline, [source, dst], grid(gpu, Math.ceil(vectors / 256))),
      release: () => {
        gpu.release(src);
        gpu.release(dst);
      },
    },
    bytes: 2 * 4 * floats,
  };
}

/**
 * Measures FMA throughput and copy bandwidth on `gpu`. Sizes are chosen to fill
 * a large GPU yet finish in well under a second on a CPU fallback.
 *
 * @param gpu The device.
 * @returns GFLOP/s and GB/s.
 */
export async function measurePeak(gpu: Gpu): Promise<Peak> {
  const big = !gpu.info.fallback;
  const fma = peakFmaOp(gpu);
  const copies = [copyOp(gpu, big ? 1 << 26 : 1 << 22, false)];
  if (gpu.info.fallback) copies.push(copyOp(gpu, 1 << 22, true));
  try {
    // A peak is the best the adapter does: the fastest of a few medians, so that a
    // busy moment on a shared machine does not flatter every kernel measured against it.
    const best = async (op: PreparedOp) => {
      let ms = Infinity;
      for (let i = 0; i < 3; i++) ms = Math.min(ms, await timeOp(gpu, op, { iterations: 5 }));
      return ms;
    };
    const fmaMs = await best(fma.op);
    let copyGbs = 0;
    for (const copy of copies) copyGbs = Math.max(copyGbs, copy.bytes / await best(copy.op) / 1e6);
    return { fma_gflops: fma.flops / fmaMs / 1e6, copy_gbs: copyGbs };
  } finally {
    fma.op.release();
    for (const copy of copies) copy.op.release();
  }
}
