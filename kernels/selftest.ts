/**
 * A quick check that the device computes what the CPU computes, in f32 and, where
 * `shader-f16` is on, in f16. Deno has shipped versions whose f16 compute
 * silently returned zeros; such a device must not be trusted with f16 kernels.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import type { DType } from "./tensor.ts";

/**
 * The verdict of {@link runSelfTest}: whether the device computed what the CPU
 * did in one precision, and if not, why.
 *
 * @example
 * ```ts
 * const result: SelfTestResult = await runSelfTest(gpu, "f16");
 * // reason, when not ok: e.g. "f16 compute returned only zeros (a known runtime bug)"
 * if (!result.ok) console.error(`f16 is off: ${result.reason}`);
 * ```
 */
export interface SelfTestResult {
  /** The kernel agreed with the CPU. */
  ok: boolean;
  /** Largest |gpu - cpu| / (1 + |cpu|) over the outputs. */
  maxError: number;
  /** Why it failed ("" when ok). */
  reason: string;
}

const N = 1000; // not a multiple of the workgroup size, to exercise the guard
const WORKGROUP = 64;

function kernel(dtype: "f32" | "f16"): string {
  const t = dtype;
  return /* wgsl */ `${dtype === "f16" ? "enable f16;\n" : ""}
// out[i] = x[i] * w[i] + 0.5 in ${t}; sums[g] = sum of x over workgroup g, accumulated in f32.
@group(0) @binding(0) var<storage, read> x: array<${t}>;
@group(0) @binding(1) var<storage, read> w: array<${t}>;
@group(0) @binding(2) var<storage, read_write> out: array<${t}>;
@group(0) @binding(3) var<storage, read_write> sums: array<f32>;
const N = ${N}u;
var<workgroup> partial: array<f32, ${WORKGROUP}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(local_invocation_id) lid: vec3u,
        @builtin(workgroup_id) wid: vec3u) {
  let i = gid.x;
  var v = 0.0;
  if (i < N) {
    out[i] = x[i] * w[i] + ${t}(0.5);
    v = f32(x[i]);
  }
  partial[lid.x] = v;
  workgroupBarrier();
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride = stride / 2u) {
    if (lid.x < stride) { partial[lid.x] += partial[lid.x + stride]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) { sums[wid.x] = partial[0]; }
}`;
}

/**
 * Runs the self-test kernel in `dtype` and compares it with the CPU.
 *
 * @param gpu The device.
 * @param dtype `"f32"`, or `"f16"` on a device with `shader-f16`.
 * @returns Whether it agreed, the largest error, and why not.
 * @example
 * ```ts
 * const { ok, maxError } = await runSelfTest(gpu, "f32");
 * ```
 */
export async function runSelfTest(gpu: Gpu, dtype: "f32" | "f16"): Promise<SelfTestResult> {
  const groups = Math.ceil(N / WORKGROUP);
  const x = Array.from({ length: N }, (_, i) => 2 * Math.sin(i));
  const w = Array.from({ length: N }, (_, i) => Math.cos(0.7 * i));
  const round = dtype === "f16" ? (v: number) => Math.f16round(v) : Math.fround;
  const xs = x.map(round);
  const ws = w.map(round);
  const expectedOut = xs.map((v, i) => v * ws[i] + 0.5);
  const expectedSums = Array.from({ length: groups }, (_, g) => {
    let s = 0;
    for (let i = g * WORKGROUP; i < Math.min(N, (g + 1) * WORKGROUP); i++) s += xs[i];
    return s;
  });

  const dt: DType = dtype;
  const tensors = [
    gpu.tensor([N], dt, { label: `selftest ${dtype} x`, data: x }),
    gpu.tensor([N], dt, { label: `selftest ${dtype} w`, data: w }),
    gpu.tensor([N], dt, { label: `selftest ${dtype} out` }),
    gpu.tensor([groups], "f32", { label: `selftest ${dtype} sums` }),
  ];
  try {
    const pipeline = gpu.pipelines.get(`selftest ${dtype}`, kernel(dtype));
    const rec = gpu.recorder({ label: `selftest ${dtype}` });
    rec.dispatch(pipeline, tensors, groups);
    rec.submit();
    const out = await gpu.readFloats(tensors[2]);
    const sums = await gpu.readFloats(tensors[3]);
    return judge(dtype, [...out, ...sums], [...expectedOut, ...expectedSums]);
  } catch (error) {
    return { ok: false, maxError: Infinity, reason: String((error as Error).message ?? error) };
  } finally {
    for (const t of tensors) gpu.release(t);
  }
}

/**
 * Checks f16 compute on a device that offers `shader-f16`.
 *
 * @param gpu The device.
 * @returns The f16 self-test's verdict.
 */
export function checkF16(gpu: Gpu): Promise<SelfTestResult> {
  return runSelfTest(gpu, "f16");
}

/**
 * Compares GPU results with the CPU's. All-zero output is called out by name:
 * it is the signature of the f16 runtime bug, not a rounding problem.
 *
 * @param dtype The precision the kernel ran in (sets the tolerance).
 * @param got GPU values.
 * @param want CPU values.
 * @returns The verdict.
 */
export function judge(dtype: "f32" | "f16", got: ArrayLike<number>, want: ArrayLike<number>): SelfTestResult {
  // f16 products round to 11 significant bits.
  const tolerance = dtype === "f16" ? 4e-3 : 1e-6;
  let maxError = 0;
  let allZero = true;
  for (let i = 0; i < want.length; i++) {
    maxError = Math.max(maxError, relative(got[i], want[i]));
    if (got[i] !== 0) allZero = false;
  }
  if (allZero) {
    return { ok: false, maxError, reason: `${dtype} compute returned only zeros (a known runtime bug)` };
  }
  if (!(maxError <= tolerance)) {
    const shown = Number.isFinite(maxError) ? maxError.toExponential(2) : String(maxError);
    return {
      ok: false,
      maxError,
      reason: `${dtype} results differ from the CPU by ${shown} (tolerance ${tolerance})`,
    };
  }
  return { ok: true, maxError, reason: "" };
}

function relative(got: number, want: number): number {
  return Number.isNaN(got) ? Infinity : Math.abs(got - want) / (1 + Math.abs(want));
}

const LOOP_PROBE = 1 << 20;

/**
 * Counts how many loop iterations one invocation may run. Mesa's llvmpipe stops
 * every loop of an invocation, silently, once 65535 iterations have run in total
 * (a guard against hung shaders), so a kernel that loops longer computes a wrong
 * answer there without any error. Kernels keep their loops below this.
 *
 * @param gpu The device.
 * @returns The cap, or Infinity when a 2^20-iteration loop ran to the end.
 */
export async function measureLoopLimit(gpu: Gpu): Promise<number> {
  const count = gpu.tensor([1], "u32", { label: "loop limit probe" });
  try {
    const code = `@group(0) @binding(0) var<storage, read_write> count: array<u32>;
@compute @workgroup_size(1)
fn main() {
  var c = 0u;
  for (var i = 0u; i < ${LOOP_PROBE}u; i++) { c += 1u; }
  count[0] = c;
}`;
    const rec = gpu.recorder({ label: "loop limit probe" });
    rec.dispatch(gpu.pipelines.get("loop limit probe", code), [count], 1);
    rec.submit();
    const ran = (await gpu.read(count))[0];
    return ran >= LOOP_PROBE ? Infinity : ran;
  } finally {
    gpu.release(count);
  }
}

/**
 * Throws when one invocation of `kernel` would make more loop trips, all its
 * loops together, than `gpu.loopLimit` ({@link measureLoopLimit}) allows: where
 * the driver would stop the loops and leave a wrong answer without an error.
 * A trip is a check of a loop's condition: each run of a loop makes one per
 * iteration and one that ends it, and llvmpipe allows `loopLimit` + 1 of them
 * (measured: one loop of 65535 iterations runs whole; 100 runs of an inner loop
 * of 1000 stop 65 runs and 405 iterations in).
 *
 * @param gpu The device.
 * @param kernel The kernel's name, for the message.
 * @param trips An upper bound on the loop trips of one invocation.
 * @param fix What the caller can change, e.g. "use a shorter sequence".
 * @throws {GpuError} When `trips` exceeds the limit.
 * @example
 * ```ts
 * expectLoopTrips(rec.gpu, "matmul", Math.ceil(K / 4) + 1, "split the product along K");
 * ```
 */
export function expectLoopTrips(gpu: Gpu, kernel: string, trips: number, fix: string): void {
  if (trips <= gpu.loopLimit + 1) return;
  throw new GpuError(
    `${kernel}: one invocation would make ${trips} loop trips, past the ${gpu.loopLimit} this adapter runs ` +
      `before it silently stops a shader's loops (Mesa's llvmpipe); ${fix}`,
  );
}
