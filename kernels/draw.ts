/**
 * Picking the next token on the GPU, so that a decoding loop can record several
 * steps in one submit and read their tokens back once: each readback costs a
 * round trip (about 12 ms in Deno on the CI machine, whatever the work), which
 * would otherwise bound decoding at one token per trip.
 *
 * The pick is the argmax of logits/temperature + Gumbel noise, an exact draw
 * from softmax(logits/temperature) (the Gumbel-max trick); temperature 0 is the
 * plain argmax. Ties go to the lowest token id, as in the CPU sampler. The noise
 * for (seed, step, sequence, token) comes from a counter-based hash, so a seed
 * reproduces its draws and no random state lives on the GPU. Penalties, top-k
 * and top-p need the CPU sampler (see `model/sampling.ts`).
 *
 * A small u32 state tensor [step, seed] drives it: {@link sampleNextTokens} draws
 * with the current step and {@link advanceDecodeStep} moves the step and the
 * cache position on, so every step of a burst replays the same dispatches.
 *
 * @module
 */

import { GpuError } from "./errors.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { declare, expectDType, expectLength, float } from "./wgsl.ts";

const WORKGROUP = 64;

/**
 * Records the draw of one token per sequence from `logits` (B, V): writes it to
 * `tokens` (the next step's input, B u32) and to row `step` of `history`
 * (S, B u32), where step and seed are `state`'s two u32s.
 *
 * @param rec The recorder.
 * @param args `tokens`, `history`, `logits` (f32), `state` ([step, seed] u32) and
 *   `temperature` (0: argmax).
 * @throws {GpuError} On dtypes or sizes that do not match, or a negative temperature.
 * @example
 * ```ts
 * gpu.write(state, [0, seed]);
 * sampleNextTokens(rec, { tokens: stepTokens, history, logits, state, temperature: 0.8 });
 * advanceDecodeStep(rec, { state, position });
 * ```
 */
export function sampleNextTokens(
  rec: Recorder,
  args: { tokens: Tensor; history: Tensor; logits: Tensor; state: Tensor; temperature: number },
): void {
  const kernel = "sampleNextTokens";
  const { tokens, history, logits, state, temperature } = args;
  expectDType(kernel, "logits", logits, ["f32"]);
  for (const [name, t] of [["tokens", tokens], ["history", history], ["state", state]] as const) {
    expectDType(kernel, name, t, ["u32"]);
  }
  const B = tokens.length;
  const V = logits.length / B;
  if (B === 0 || !Number.isInteger(V) || V === 0) {
    throw new GpuError(`${kernel}: logits of ${logits.length} values are not (B=${B}, V) for ${B} tokens`);
  }
  if (history.length % B !== 0) {
    throw new GpuError(`${kernel}: history of ${history.length} is not (steps, B=${B})`);
  }
  expectLength(kernel, "state", state, 2);
  if (!(temperature >= 0 && Number.isFinite(temperature))) {
    throw new GpuError(`${kernel}: temperature must be >= 0, got ${temperature}`);
  }
  const { wgsl, bindings } = declare([
    { name: "logits", tensor: logits },
    { name: "state", tensor: state },
    { name: "tokens", tensor: tokens, write: true },
    { name: "history", tensor: history, write: true },
  ]);
  const score = temperature === 0
    ? "logits[row + v]"
    : `logits[row + v] * ${float(1 / temperature)} + gumbel(seed, step, b, v)`;
  const code = `${wgsl}
const B = ${B}u;
const V = ${V}u;
var<workgroup> bestScore: array<f32, ${WORKGROUP}>;
var<workgroup> bestToken: array<u32, ${WORKGROUP}>;

// PCG's output permutation: a well-mixed u32 from a u32.
fn hash(x: u32) -> u32 {
  let s = x * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}

// Standard Gumbel noise for one (seed, step, sequence, token): -log(-log(u)), u in (0, 1).
fn gumbel(seed: u32, step: u32, b: u32, v: u32) -> f32 {
  let h = hash(seed ^ hash(step ^ hash(b ^ hash(v))));
  let u = (f32(h >> 8u) + 0.5) / 16777216.0;
  return -log(-log(u));
}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid3: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let lid = lid3.x;
  let b = wid.x;
  let step = state[0];
  let seed = state[1];
  let row = b * V;
  var best = -3.4e38;
  var token = 0xffffffffu;
  for (var v = lid; v < V; v += ${WORKGROUP}u) {
    let s = ${score};
    if (s > best || token == 0xffffffffu) { best = s; token = v; }
  }
  bestScore[lid] = best;
  bestToken[lid] = token;
  workgroupBarrier();
  // Fixed-order tree; on equal scores the lower token id wins.
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride >>= 1u) {
    if (lid < stride) {
      let s = bestScore[lid + stride];
      let t = bestToken[lid + stride];
      if (t != 0xffffffffu && (s > bestScore[lid] || (s == bestScore[lid] && t < bestToken[lid]))) {
        bestScore[lid] = s;
        bestToken[lid] = t;
      }
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    tokens[b] = bestToken[0];
    history[step * B + b] = bestToken[0];
  }
}`;
  rec.dispatch(rec.gpu.pipelines.get(`${kernel} B${B} V${V}`, code), bindings, B);
}

/**
 * Records the end of a decoding step: the draw counter in `state` and the cache
 * `position` each move on by one.
 *
 * @param rec The recorder.
 * @param args `state` ([step, seed] u32) and `position` (u32 [1]).
 * @example
 * ```ts
 * advanceDecodeStep(rec, { state, position: cache.position });
 * ```
 */
export function advanceDecodeStep(rec: Recorder, args: { state: Tensor; position: Tensor }): void {
  const kernel = "advanceDecodeStep";
  expectDType(kernel, "state", args.state, ["u32"]);
  expectDType(kernel, "position", args.position, ["u32"]);
  expectLength(kernel, "state", args.state, 2);
  expectLength(kernel, "position", args.position, 1);
  const { wgsl, bindings } = declare([
    { name: "state", tensor: args.state, write: true },
    { name: "position", tensor: args.position, write: true },
  ]);
  const code = `${wgsl}
@compute @workgroup_size(1)
fn main() {
  state[0] += 1u;
  position[0] += 1u;
}`;
  rec.dispatch(rec.gpu.pipelines.get(kernel, code), bindings, 1);
}
