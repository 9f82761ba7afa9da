/**
 * Rotary position embedding (RoPE), Hugging Face LLaMA "rotate_half" convention,
 * applied in place to the query and key parts of the fused projection output
 * qkv (B, T, (NH + 2·NKV)·HS); the value part is left alone.
 *
 * For i in [0, HS/2): freq_i = theta^(-2i/HS), angle = pos·freq_i with
 * pos = t + positionOffset, and the pair (x[i], x[i + HS/2]) is rotated by it.
 * `ropeBackward` applies the transpose (the inverse rotation) to the gradient in
 * place: it overwrites dqkv's q and k parts with the gradient of RoPE's input.
 *
 * Accuracy at long positions: pos·freq grows to thousands of radians, where an
 * f32 angle has lost its fraction of a turn and sin/cos of a large argument are
 * loose on GPUs. So each frequency is baked as a 64-bit fixed-point fraction of
 * a turn (freq/2π·2⁶⁴, from float64 on the host) and pos·F mod 2⁶⁴ is done in
 * exact u32 arithmetic: the angle reaches sin/cos already reduced to [-π, π)
 * with an error near one f32 rounding, however large pos is.
 *
 * One thread per (token, i): it computes cos and sin once and rotates that pair
 * in every q and k head, so the transcendental work is amortised over heads.
 *
 * @module
 */

import { GpuError } from "./errors.ts";
import type { Recorder } from "./recorder.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "./recorder.ts";
import { Tensor } from "./tensor.ts";
import { stageReads, TEXEL_READ_MIN, texelReads } from "./texels.ts";
import { declare, expectDType, expectF16Support, expectLength, type StorageDecl } from "./wgsl.ts";

const WORKGROUP = 64;

/**
 * The head counts, frequency base and position offset that {@link ropeForward}
 * and {@link ropeBackward} share besides the tensor; pass the backward the same
 * values as the forward.
 *
 * @example
 * ```ts
 * const rope: RopeOptions = { nHead: NH, nKvHead: NKV, theta: 500000 };
 * ropeForward(rec, { ...rope, qkv }); // qkv [B, T, (NH + 2·NKV)·HS]
 * ropeBackward(rec, { ...rope, dqkv });
 * ```
 */
export interface RopeOptions {
  /** Query heads NH. */
  nHead: number;
  /** Key/value heads NKV (divides NH). */
  nKvHead: number;
  /** Frequency base, 10000 in LLaMA 1/2, 500000 in LLaMA 3. */
  theta: number;
  /**
   * Position of token t is t + positionOffset (KV-cache decoding). A number is
   * baked into the kernel as a constant (one pipeline per value: right for
   * training, where it is 0). A u32 tensor of one element is read by the kernel
   * instead, so a decoding loop can advance it with `gpu.write` without
   * compiling a pipeline per token. Default 0.
   */
  positionOffset?: number | Tensor;
  /**
   * Read the tensor from a staged copy, four pairs a thread, rather than storage
   * (see `texels.ts`); the results are the same bits. Default: on a software
   * adapter, from 2^14 elements, when HS is a multiple of 8.
   */
  texels?: boolean;
}

/**
 * Rotates the q and k heads of `qkv` in place by their positions.
 *
 * @param rec The recorder.
 * @param args `qkv` (B, T, (NH + 2·NKV)·HS), f32 or f16, HS even; sizes and theta.
 * @example
 * ```ts
 * ropeForward(rec, { qkv, nHead: 8, nKvHead: 2, theta: 10000 });
 * ```
 */
export function ropeForward(rec: Recorder, args: RopeOptions & { qkv: Tensor }): void {
  recordRope(rec, "ropeForward", "qkv", args.qkv, args, 1);
}

/**
 * Gradient of {@link ropeForward}: rotates the q and k parts of `dqkv` back by
 * their positions, in place (overwrites them; the v part is untouched, its
 * gradient passes through RoPE unchanged).
 *
 * @param rec The recorder.
 * @param args `dqkv` (B, T, (NH + 2·NKV)·HS), f32 or f16; the forward's sizes, theta and offset.
 * @example
 * ```ts
 * ropeBackward(rec, { dqkv, nHead: 8, nKvHead: 2, theta: 10000 });
 * ```
 */
export function ropeBackward(rec: Recorder, args: RopeOptions & { dqkv: Tensor }): void {
  recordRope(rec, "ropeBackward", "dqkv", args.dqkv, args, -1);
}

/**
 * The head size of a qkv tensor (B, T, (NH + 2·NKV)·HS), checked.
 *
 * @param kernel Kernel name for messages.
 * @param name Argument name for messages.
 * @param qkv The tensor.
 * @param nHead NH.
 * @param nKvHead NKV.
 * @returns `[B, T, HS]`.
 */
export function qkvSizes(
  kernel: string,
  name: string,
  qkv: Tensor,
  nHead: number,
  nKvHead: number,
): [number, number, number] {
  if (!Number.isInteger(nHead) || !Number.isInteger(nKvHead) || nHead < 1 || nKvHead < 1) {
    throw new GpuError(`${kernel}: nHead ${nHead} and nKvHead ${nKvHead} must be positive integers`);
  }
  if (nHead % nKvHead !== 0) {
    throw new GpuError(`${kernel}: nKvHead ${nKvHead} must divide nHead ${nHead}`);
  }
  if (qkv.shape.length !== 3) {
    throw new GpuError(
      `${kernel}: ${name} "${qkv.label}" has shape [${
        qkv.shape.join(", ")
      }], expected [B, T, (NH + 2·NKV)·HS]`,
    );
  }
  const [B, T, C] = qkv.shape;
  const heads = nHead + 2 * nKvHead;
  if (C % heads !== 0 || C === 0) {
    throw new GpuError(
      `${kernel}: ${name} "${qkv.label}" has ${C} channels, not a multiple of NH + 2·NKV = ${heads}`,
    );
  }
  return [B, T, C / heads];
}

function recordRope(
  rec: Recorder,
  kernel: string,
  name: string,
  x: Tensor,
  options: RopeOptions,
  direction: 1 | -1,
): void {
  const { nHead, nKvHead, theta } = options;
  const offset = options.positionOffset ?? 0;
  expectDType(kernel, name, x, ["f32", "f16"]);
  const [B, T, HS] = qkvSizes(kernel, name, x, nHead, nKvHead);
  if (HS % 2 !== 0) {
    throw new GpuError(
      `${kernel}: head size ${HS} is odd; RoPE rotates pairs (i, i + HS/2), so HS must be even`,
    );
  }
  if (!(theta > 1) || !Number.isFinite(theta)) {
    throw new GpuError(`${kernel}: theta ${theta} must be a finite number above 1 (LLaMA uses 10000)`);
  }
  const decls: StorageDecl[] = [];
  let position: string;
  if (typeof offset === "number") {
    if (!Number.isInteger(offset) || offset < 0 || offset + T > 2 ** 32) {
      throw new GpuError(`${kernel}: positionOffset ${offset} must be a non-negative integer below 2^32 - T`);
    }
    position = `t + ${offset}u`;
  } else {
    expectDType(kernel, "positionOffset", offset, ["u32"]);
    expectLength(kernel, "positionOffset", offset, 1);
    decls.push({ name: "offset", tensor: offset });
    position = "t + offset[0]";
  }
  expectF16Support(kernel, rec.gpu.features.f16, [x]);
  const half = HS / 2;
  // Four pairs a thread, x as vec4s read from a staged copy (written in place to storage).
  const vectors = HS % 8 === 0 && x.byteOffset % (4 * Tensor.bytesPerElement(x.dtype)) === 0;
  if (options.texels && !vectors) {
    throw new GpuError(
      `${kernel}: texel reads need a head size that is a multiple of 8 (got ${HS}) and a 4-element-aligned ` +
        `${name}; leave texels unset`,
    );
  }
  const wanted = options.texels ?? (rec.gpu.info.fallback && x.length >= TEXEL_READ_MIN);
  const staged = wanted && vectors ? stageReads(rec, kernel, [["x", x]]) : null;
  if (options.texels && !staged) throw new GpuError(`${kernel}: ${name} "${x.label}" does not fit a texture`);
  const width = staged ? 4 : 1;
  const t = x.dtype;
  decls.push({ name: "x", tensor: x, write: true, element: staged ? `vec4<${t}>` : t });
  const { wgsl, bindings } = declare(decls);
  const reads = texelReads(staged ?? [], bindings.length);
  const read = (index: string) => staged ? `fetch_x(${index})` : `f32(x[${index}])`;
  // Angles of pairs i .. i + width − 1: one cos and sin each, as in the scalar kernel.
  const angles = staged
    ? `var c = vec4<f32>();
  var s = vec4<f32>();
  ${
      [0, 1, 2, 3].map((e) =>
        `{ let angle = ropeAngle(${position}, i + ${e}u); c[${e}] = cos(angle); s[${e}] = sin(angle); }`
      )
        .join("\n  ")
    }`
    : `let angle = ropeAngle(${position}, i);
  let c = cos(angle);
  let s = sin(angle);`;
  // direction 1 rotates by +angle; -1 by -angle (the transpose, for the gradient).
  const sign = direction === 1 ? "" : "-";
  const code = `${wgsl}
${reads.wgsl}
const N = ${B * T}u;        // tokens
const T = ${T}u;
const HALF = ${half}u;      // HS / 2
const HS = ${HS}u;
const ROW = ${(nHead + 2 * nKvHead) * HS}u;
const ROTATED = ${nHead + nKvHead}u; // q heads then k heads, contiguous in a row
const W = ${width}u;        // pairs per thread, and elements per index of x
${ropeAngleWgsl(HS, theta)}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let gidx = ${WGSL_LINEAR_WORKGROUP} * ${WORKGROUP}u + lid.x;
  if (gidx >= N * HALF / W) { return; }
  let n = gidx / (HALF / W);
  let i = (gidx % (HALF / W)) * W;
  let t = n % T;
  ${angles}
  for (var h = 0u; h < ROTATED; h++) {
    let a = (n * ROW + h * HS + i) / W;
    let x1 = ${read("a")};
    let x2 = ${read("a + HALF / W")};
    x[a] = ${staged ? `vec4<${t}>` : t}(x1 * c - x2 * ${sign}s);
    x[a + HALF / W] = ${staged ? `vec4<${t}>` : t}(x2 * c + x1 * ${sign}s);
  }
}`;
  const label = `${kernel} ${t} HS${HS}${staged ? " from texels" : ""}`;
  const workgroups = Math.ceil((B * T * half) / width / WORKGROUP);
  rec.dispatch(
    rec.gpu.pipelines.get(label, code),
    [...bindings, ...reads.views],
    grid(rec.gpu, workgroups),
  );
}

/**
 * WGSL for `fn ropeAngle(pos: u32, i: u32) -> f32`: the angle, in radians within
 * [-π, π), by which RoPE rotates pair i of a head at position pos, reduced
 * exactly in fixed point (see the module doc); with the constants it needs.
 *
 * @param HS The head size (even).
 * @param theta The frequency base.
 * @returns WGSL for the module scope.
 */
export function ropeAngleWgsl(HS: number, theta: number): string {
  const half = HS / 2;
  const [hi, lo] = turnFractions(HS, theta);
  return `// freq_i / 2π as a 64-bit binary fraction of a turn, split in two u32 words.
var<private> F_HI: array<u32, ${half}> = array<u32, ${half}>(${hi.join(", ")});
var<private> F_LO: array<u32, ${half}> = array<u32, ${half}>(${lo.join(", ")});

// High 32 bits of the 64-bit product a·b.
fn mulhi(a: u32, b: u32) -> u32 {
  let a0 = a & 0xffffu; let a1 = a >> 16u;
  let b0 = b & 0xffffu; let b1 = b >> 16u;
  let p01 = a0 * b1; let p10 = a1 * b0;
  let mid = ((a0 * b0) >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
}

fn ropeAngle(pos: u32, i: u32) -> f32 {
  // pos·F mod 2^64: the turn fraction in [0, 1), as a signed 32.32 fixed-point word pair.
  let lo = pos * F_LO[i];
  let hi = pos * F_HI[i] + mulhi(pos, F_LO[i]);
  let turns = (f32(bitcast<i32>(hi)) + f32(lo) * 2.3283064365386963e-10) * 2.3283064365386963e-10;
  return turns * 6.283185307179586;
}`;
}

/**
 * freq_i / 2π as 64-bit fractions of a turn, rounded from float64: the high and
 * low u32 words per i. The float64 value carries 53 bits, so the phase error at
 * position p is about p·freq·2⁻⁵³ radians.
 */
function turnFractions(HS: number, theta: number): [string[], string[]] {
  const hi: string[] = [];
  const lo: string[] = [];
  for (let i = 0; i < HS / 2; i++) {
    const turn = theta ** (-2 * i / HS) / (2 * Math.PI); // < 0.16: fits below 2^64
    const fixed = BigInt(Math.round(turn * 2 ** 64));
    hi.push(`${fixed >> 32n}u`);
    lo.push(`${fixed & 0xffffffffn}u`);
  }
  return [hi, lo];
}
