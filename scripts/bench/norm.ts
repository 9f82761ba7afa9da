/**
 * Bench cases of RMSNorm (forward, backward, residual-fused forward) and SwiGLU
 * (forward, backward): memory-bound, reported in GB/s of compulsory traffic.
 *
 * The naive twins are the obvious kernels: one thread per row for RMSNorm (and
 * one thread per column looping over all rows for dweight), one thread per
 * scalar for SwiGLU. The fused residual norm's twin is the unfused pair it
 * replaces, `add` then `rmsnormForward`, so its ratio says whether fusing pays.
 *
 * @module
 */

import type { Gpu } from "../../kernels/device.ts";
import { add } from "../../kernels/elementwise.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "../../kernels/recorder.ts";
import { residualRmsnormForward, rmsnormBackward, rmsnormForward } from "../../kernels/rmsnorm.ts";
import { swigluBackward, swigluForward } from "../../kernels/swiglu.ts";
import type { Tensor } from "../../kernels/tensor.ts";
import { declare } from "../../kernels/wgsl.ts";
import type { KernelBench, PreparedOp } from "./harness.ts";

const EPS = 1e-5;
const NAIVE_WORKGROUP = 64;

type Float = "f32" | "f16";
const BYTES: Record<Float, number> = { f32: 4, f16: 2 };

/** Allocates the named tensors and a `release` for all of them. */
function alloc(gpu: Gpu, specs: Record<string, [number[], Float]>) {
  const t: Record<string, Tensor> = {};
  for (const [name, [shape, dtype]] of Object.entries(specs)) {
    t[name] = gpu.tensor(shape, dtype, { label: `bench ${name}` });
  }
  return { t, release: () => Object.values(t).forEach((x) => gpu.release(x)) };
}

/** One thread per `count` items, `body` indexed by `i`, in a plain 1-D (or 2-D) grid. */
function naiveOp(
  gpu: Gpu,
  label: string,
  decls: Parameters<typeof declare>[0],
  count: number,
  body: string,
): (rec: Parameters<PreparedOp["record"]>[0]) => void {
  const { wgsl, bindings } = declare(decls);
  const code = `${wgsl}
@compute @workgroup_size(${NAIVE_WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WGSL_LINEAR_WORKGROUP} * ${NAIVE_WORKGROUP}u + lid.x;
  if (i >= ${count}u) { return; }
  ${body}
}`;
  const pipeline = gpu.pipelines.get(label, code);
  const groups = grid(gpu, Math.ceil(count / NAIVE_WORKGROUP));
  return (rec) => rec.dispatch(pipeline, bindings, groups);
}

function naiveRmsnormForward(gpu: Gpu, N: number, C: number, dtype: Float): PreparedOp {
  const { t, release } = alloc(gpu, {
    x: [[N, C], dtype],
    w: [[C], "f32"],
    out: [[N, C], dtype],
    rstd: [[N], "f32"],
  });
  const record = naiveOp(
    gpu,
    `naive rmsnorm forward ${dtype}`,
    [{ name: "x", tensor: t.x }, { name: "w", tensor: t.w }, { name: "out", tensor: t.out, write: true }, {
      name: "rstd",
      tensor: t.rstd,
      write: true,
    }],
    N,
    `var ss = 0.0;
  for (var c = 0u; c < ${C}u; c++) { let v = f32(x[i * ${C}u + c]); ss += v * v; }
  let r = inverseSqrt(ss / ${C}.0 + ${EPS});
  rstd[i] = r;
  for (var c = 0u; c < ${C}u; c++) { out[i * ${C}u + c] = ${dtype}(f32(x[i * ${C}u + c]) * r * w[c]); }`,
  );
  return { record, release };
}

function naiveRmsnormBackward(gpu: Gpu, N: number, C: number): PreparedOp {
  const { t, release } = alloc(gpu, {
    dout: [[N, C], "f32"],
    x: [[N, C], "f32"],
    w: [[C], "f32"],
    rstd: [[N], "f32"],
    dx: [[N, C], "f32"],
    dw: [[C], "f32"],
  });
  const rows = naiveOp(
    gpu,
    "naive rmsnorm backward dx",
    [{ name: "dout", tensor: t.dout }, { name: "x", tensor: t.x }, { name: "w", tensor: t.w }, {
      name: "rstd",
      tensor: t.rstd,
    }, { name: "dx", tensor: t.dx, write: true }],
    N,
    `let r = rstd[i];
  var gx = 0.0;
  for (var c = 0u; c < ${C}u; c++) { gx += dout[i * ${C}u + c] * w[c] * x[i * ${C}u + c]; }
  let coef = r * r * gx / ${C}.0;
  for (var c = 0u; c < ${C}u; c++) {
    let j = i * ${C}u + c;
    dx[j] = r * (dout[j] * w[c] - x[j] * coef);
  }`,
  );
  const cols = naiveOp(
    gpu,
    "naive rmsnorm backward dweight",
    [{ name: "dout", tensor: t.dout }, { name: "x", tensor: t.x }, { name: "rstd", tensor: t.rstd }, {
      name: "dw",
      tensor: t.dw,
      write: true,
    }],
    C,
    `var s = 0.0;
  for (var n = 0u; n < ${N}u; n++) { s += dout[n * ${C}u + i] * x[n * ${C}u + i] * rstd[n]; }
  dw[i] += s;`,
  );
  return {
    record: (rec) => {
      rows(rec);
      cols(rec);
    },
    release,
  };
}

function naiveSwiglu(gpu: Gpu, N: number, H: number, dtype: Float, backward: boolean): PreparedOp {
  const { t, release } = alloc(gpu, {
    gu: [[N, 2 * H], dtype],
    dout: [[N, H], dtype],
    out: [[N, backward ? 2 * H : H], dtype],
  });
  const load = `let row = i / ${H}u;
  let gi = i + row * ${H}u;
  let g = f32(gu[gi]);
  let u = f32(gu[gi + ${H}u]);
  let s = 1.0 / (1.0 + exp(-g));`;
  const record = backward
    ? naiveOp(
      gpu,
      `naive swiglu backward ${dtype}`,
      [{ name: "gu", tensor: t.gu }, { name: "dout", tensor: t.dout }, {
        name: "out",
        tensor: t.out,
        write: true,
      }],
      N * H,
      `${load}
  let d = f32(dout[i]);
  out[gi] = ${dtype}(d * u * s * (1.0 + g * (1.0 - s)));
  out[gi + ${H}u] = ${dtype}(d * g * s);`,
    )
    : naiveOp(
      gpu,
      `naive swiglu forward ${dtype}`,
      [{ name: "gu", tensor: t.gu }, { name: "out", tensor: t.out, write: true }],
      N * H,
      `${load}
  out[i] = ${dtype}(g * s * u);`,
    );
  return { record, release };
}

/**
 * RMSNorm and SwiGLU at a training-sized activation: N = 4096 rows (1024 on a
 * CPU fallback), C = 768 channels, H = 2048 hidden.
 *
 * @param gpu The device (a CPU fallback gets fewer rows).
 * @returns The cases, each with its naive twin.
 */
export function normBenches(gpu: Gpu): KernelBench[] {
  const N = gpu.info.fallback ? 1024 : 4096;
  const C = 768;
  const H = 2048;
  const benches: KernelBench[] = [];
  // The layout rmsnorm picks: a thread per row on a software adapter.
  const layout = gpu.info.fallback ? "a thread per row" : "32 threads per row";

  for (const dtype of ["f32", "f16"] as const) {
    const s = BYTES[dtype];
    benches.push({
      name: "rmsnorm",
      variant: `forward, ${layout}`,
      shape: [N, C],
      dtype,
      flops: 0,
      bytes: 2 * s * N * C + 4 * C + 4 * N,
      prepare(gpu) {
        const { t, release } = alloc(gpu, {
          x: [[N, C], dtype],
          w: [[C], "f32"],
          out: [[N, C], dtype],
          rstd: [[N], "f32"],
        });
        return {
          record: (rec) => rmsnormForward(rec, { out: t.out, rstd: t.rstd, x: t.x, weight: t.w, eps: EPS }),
          release,
        };
      },
      naive: (gpu) => naiveRmsnormForward(gpu, N, C, dtype),
    });
  }

  benches.push({
    name: "rmsnorm",
    variant: gpu.info.fallback ? "backward, rows + column dw sum" : "backward, rows + partial dw sum",
    shape: [N, C],
    dtype: "f32",
    flops: 0,
    // dout, x read; dx written; weight, rstd read; dweight read and written.
    bytes: 12 * N * C + 4 * C + 4 * N + 8 * C,
    prepare(gpu) {
      const { t, release } = alloc(gpu, {
        dout: [[N, C], "f32"],
        x: [[N, C], "f32"],
        w: [[C], "f32"],
        rstd: [[N], "f32"],
        dx: [[N, C], "f32"],
        dw: [[C], "f32"],
      });
      return {
        record: (rec) =>
          rmsnormBackward(rec, { dx: t.dx, dweight: t.dw, dout: t.dout, x: t.x, weight: t.w, rstd: t.rstd }),
        release,
      };
    },
    naive: (gpu) => naiveRmsnormBackward(gpu, N, C),
  });

  benches.push({
    name: "rmsnorm",
    variant: "residual fused (naive: add+norm)",
    shape: [N, C],
    dtype: "f32",
    flops: 0,
    // x, branch read; residualOut, out written; weight, rstd.
    bytes: 16 * N * C + 4 * C + 4 * N,
    prepare(gpu) {
      const { t, release } = alloc(gpu, {
        x: [[N, C], "f32"],
        b: [[N, C], "f32"],
        w: [[C], "f32"],
        out: [[N, C], "f32"],
        rstd: [[N], "f32"],
      });
      return {
        record: (rec) =>
          residualRmsnormForward(rec, {
            residualOut: t.x,
            out: t.out,
            rstd: t.rstd,
            x: t.x,
            branch: t.b,
            weight: t.w,
            eps: EPS,
          }),
        release,
      };
    },
    naive(gpu) {
      const { t, release } = alloc(gpu, {
        x: [[N, C], "f32"],
        b: [[N, C], "f32"],
        w: [[C], "f32"],
        out: [[N, C], "f32"],
        rstd: [[N], "f32"],
      });
      return {
        record: (rec) => {
          add(rec, { out: t.x, a: t.x, b: t.b });
          rmsnormForward(rec, { out: t.out, rstd: t.rstd, x: t.x, weight: t.w, eps: EPS });
        },
        release,
      };
    },
  });

  for (const dtype of ["f32", "f16"] as const) {
    const s = BYTES[dtype];
    benches.push({
      name: "swiglu",
      variant: "forward, vec4",
      shape: [N, H],
      dtype,
      flops: 0,
      bytes: 3 * s * N * H,
      prepare(gpu) {
        const { t, release } = alloc(gpu, { gu: [[N, 2 * H], dtype], out: [[N, H], dtype] });
        return { record: (rec) => swigluForward(rec, { out: t.out, gateUp: t.gu }), release };
      },
      naive: (gpu) => naiveSwiglu(gpu, N, H, dtype, false),
    });
  }

  benches.push({
    name: "swiglu",
    variant: "backward, vec4",
    shape: [N, H],
    dtype: "f32",
    flops: 0,
    // dout and gateUp read, dgateUp written.
    bytes: 20 * N * H,
    prepare(gpu) {
      const { t, release } = alloc(gpu, {
        gu: [[N, 2 * H], "f32"],
        dout: [[N, H], "f32"],
        dgu: [[N, 2 * H], "f32"],
      });
      return {
        record: (rec) => swigluBackward(rec, { dgateUp: t.dgu, dout: t.dout, gateUp: t.gu }),
        release,
      };
    },
    naive: (gpu) => naiveSwiglu(gpu, N, H, "f32", true),
  });
  return benches;
}
