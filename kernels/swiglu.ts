/**
 * SwiGLU on the packed output of the fused gate/up matmul: gateUp [N, 2H] holds
 * gate in columns 0..H−1 and up in H..2H−1; out [N, H] = silu(gate) · up with
 * silu(g) = g·sigmoid(g).
 *
 * Gradients: `dgateUp` is an activation gradient and is overwritten. It may be
 * `gateUp` itself: each thread reads its gate and up before writing their
 * gradients, so the backward can reuse the forward's buffer.
 *
 * One thread per output element, four at a time as vec4s when H % 4 == 0
 * (memory-bound: nothing to share between threads). Math is f32 also for f16
 * tensors. On a software adapter the vec4 kernels read their inputs by texel
 * fetch from staged copies (a storage load there is a loop over the SIMD lanes;
 * see `texels.ts`) and write storage. The sigmoid is computed from e^−|g|, which
 * never overflows: WGSL leaves exp's overflow undefined, and 1/(1 + e^100) would
 * need it to be inf.
 *
 * @module
 */

import { recordElementwise } from "./elementwise.ts";
import { GpuError } from "./errors.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { type StagedTexels, stageReads, TEXEL_READ_MIN, texelReads, texelWriterWgsl } from "./texels.ts";
import { expectDType, expectShape, type StorageDecl } from "./wgsl.ts";

/** Checks out-like [..., H] against gateUp [..., 2H]; returns H, the vector width and vectors per half-row. */
function layoutOf(kernel: string, name: string, half: Tensor, gateUp: Tensor) {
  const H = half.shape.length > 0 ? half.shape[half.shape.length - 1] : 0;
  if (H < 1) {
    throw new GpuError(
      `${kernel}: ${name} "${half.label}" has shape [${half.shape.join(", ")}], expected [N, H] with H >= 1`,
    );
  }
  expectDType(kernel, name, half, ["f32", "f16"]);
  expectDType(kernel, "gateUp", gateUp, ["f32", "f16"]);
  expectShape(kernel, "gateUp", gateUp, [...half.shape.slice(0, -1), 2 * H]);
  const width = H % 4 === 0 ? 4 : 1;
  const vec = width === 4;
  return {
    H,
    width,
    /** Vectors per half-row (gate or up). */
    vecs: H / width,
    F: vec ? "vec4f" : "f32",
    elem: (t: Tensor) => (vec ? `vec4<${t.dtype}>` : t.dtype),
  };
}

/**
 * WGSL that loads gate `g` and up `u` for output vector i from `src` (or, with
 * `texels`, its staged copy `fetch_gateUp`), and s = sigmoid(g).
 */
function loadGateUp(src: string, F: string, vecs: number, texels: boolean): string {
  const read = (index: string) => texels ? `fetch_gateUp(${index})` : `${F}(${src}[${index}])`;
  return `let row = i / ${vecs}u;
  let gi = i + row * ${vecs}u; // gate of (row, h) sits at row·2H + h, up H further
  let g = ${read("gi")};
  let u = ${read(`gi + ${vecs}u`)};
  let e = exp(-abs(g)); // in (0, 1]: no overflow for any g
  let s = select(e, ${F}(1.0), g >= ${F}(0.0)) / (1.0 + e);`;
}

/**
 * Staged copies of `reads` for texel fetches `fetch_{name}(i)`, with vec4 rows when
 * each can be staged and `texels` (default: on a software adapter, from
 * {@link TEXEL_READ_MIN} elements of the last read on) allows; else null (read storage).
 */
function stagedReads(
  rec: Recorder,
  width: number,
  reads: readonly (readonly [string, Tensor])[],
  texels = rec.gpu.info.fallback && reads[reads.length - 1][1].length >= TEXEL_READ_MIN,
): (readonly [string, StagedTexels])[] | null {
  return width === 4 && texels ? stageReads(rec, "swiglu", reads) : null;
}

function sameRange(a: Tensor, b: Tensor): boolean {
  return a.buffer === b.buffer && a.byteOffset === b.byteOffset && a.byteLength === b.byteLength &&
    a.dtype === b.dtype;
}

function expectDisjoint(
  kernel: string,
  name: string,
  out: Tensor,
  inputs: readonly (readonly [string, Tensor])[],
) {
  for (const [inName, t] of inputs) {
    if (
      out.buffer === t.buffer && out.byteOffset < t.byteOffset + t.byteLength &&
      t.byteOffset < out.byteOffset + out.byteLength
    ) {
      throw new GpuError(
        `${kernel}: ${name} "${out.label}" overlaps ${inName} "${t.label}"; give ${name} its own memory`,
      );
    }
  }
}

/**
 * SwiGLU forward: out[n, h] = silu(gateUp[n, h]) · gateUp[n, H + h].
 *
 * @param rec The recorder.
 * @param args `out` [N, H] (f32 or f16, overwritten) and `gateUp` [N, 2H]
 *   (f32 or f16; any leading shape, e.g. [B, T, 2H]); `texels` chooses texel
 *   reads (default: on a software adapter, for 2^14 or more elements
 *   of gateUp, where H % 4 == 0).
 * @example
 * ```ts
 * // gateUp = x · [W_gate; W_up]ᵀ from one matmul, then:
 * swigluForward(rec, { out: hidden, gateUp });
 * ```
 */
export function swigluForward(rec: Recorder, args: { out: Tensor; gateUp: Tensor; texels?: boolean }): void {
  const kernel = "swigluForward";
  const { out, gateUp } = args;
  const { F, elem, vecs, width } = layoutOf(kernel, "out", out, gateUp);
  expectDisjoint(kernel, "out", out, [["gateUp", gateUp]]);
  const staged = stagedReads(rec, width, [["gateUp", gateUp]], args.texels);
  const decls: StorageDecl[] = [
    ...(staged ? [] : [{ name: "gateUp", tensor: gateUp, element: elem(gateUp) }]),
    { name: "out", tensor: out, write: true, element: elem(out) },
  ];
  // A kept texel copy of out (a decoding step's matmul input) is written as well; a vec4 is a texel.
  const mirror = F === "vec4f" ? rec.texelCache?.mirror(rec, out) ?? null : null;
  const reads = texelReads(staged ?? [], decls.length + (mirror ? 1 : 0));
  recordElementwise(rec, {
    label: `${kernel} ${elem(gateUp)}->${elem(out)}${mirror ? " +texels" : ""}${
      staged ? " from texels" : ""
    }`,
    decls,
    n: out.length / (F === "vec4f" ? 4 : 1),
    body: `${loadGateUp("gateUp", F, vecs, staged !== null)}
  let o = ${elem(out)}(g * s * u);
  out[i] = o;${mirror ? "\n  storeOut(i, vec4<f32>(o));" : ""}`,
    helpers: `\n${mirror ? texelWriterWgsl("storeOut", decls.length, mirror) : ""}\n${reads.wgsl}`,
    textures: [...(mirror ? [mirror.view] : []), ...reads.views],
  });
  if (mirror) rec.texelCache!.markCurrent(rec, out);
}

/**
 * SwiGLU backward: with s = sigmoid(g), dgate = dout·up·s·(1 + g·(1 − s)) and
 * dup = dout·g·s, written packed like `gateUp`.
 *
 * @param rec The recorder.
 * @param args `dgateUp` [N, 2H] (f32 or f16, overwritten; may be `gateUp` itself),
 *   `dout` [N, H] and `gateUp` [N, 2H] (f32 or f16); `texels` as in {@link swigluForward}.
 * @example
 * ```ts
 * // Reuse the forward's buffer for the gradient: gateUp is not needed afterwards.
 * swigluBackward(rec, { dgateUp: gateUp, dout: dhidden, gateUp });
 * ```
 */
export function swigluBackward(
  rec: Recorder,
  args: { dgateUp: Tensor; dout: Tensor; gateUp: Tensor; texels?: boolean },
): void {
  const kernel = "swigluBackward";
  const { dgateUp, dout, gateUp } = args;
  const { F, elem, vecs, width } = layoutOf(kernel, "dout", dout, gateUp);
  expectDType(kernel, "dgateUp", dgateUp, ["f32", "f16"]);
  expectShape(kernel, "dgateUp", dgateUp, gateUp.shape);
  const inPlace = sameRange(dgateUp, gateUp);
  expectDisjoint(
    kernel,
    "dgateUp",
    dgateUp,
    inPlace ? [["dout", dout]] : [["dout", dout], ["gateUp", gateUp]],
  );
  // Staged copies are taken before the kernel runs, so reading gateUp's copy while
  // writing dgateUp in place is safe.
  const staged = stagedReads(rec, width, [["dout", dout], ["gateUp", gateUp]], args.texels);
  const decls: StorageDecl[] = [
    ...(staged ? [] : [{ name: "dout", tensor: dout, element: elem(dout) }]),
    ...(inPlace || staged ? [] : [{ name: "gateUp", tensor: gateUp, element: elem(gateUp) }]),
    { name: "dgateUp", tensor: dgateUp, write: true, element: elem(dgateUp) },
  ];
  const reads = texelReads(staged ?? [], decls.length);
  recordElementwise(rec, {
    label: `${kernel} ${elem(gateUp)}->${elem(dgateUp)}${inPlace ? " in place" : ""}${
      staged ? " from texels" : ""
    }`,
    decls,
    n: dout.length / (F === "vec4f" ? 4 : 1),
    helpers: `\n${reads.wgsl}`,
    textures: reads.views,
    body: `${loadGateUp(inPlace ? "dgateUp" : "gateUp", F, vecs, staged !== null)}
  let d = ${staged ? "fetch_dout(i)" : `${F}(dout[i])`};
  dgateUp[gi] = ${elem(dgateUp)}(d * u * s * (1.0 + g * (1.0 - s)));
  dgateUp[gi + ${vecs}u] = ${elem(dgateUp)}(d * g * s);`,
  });
}
