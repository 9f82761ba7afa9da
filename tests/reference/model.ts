/**
 * Float64 reference of the whole LLaMA model, forward and backward, composed
 * from the per-op references: the GPU model's loss and every parameter gradient
 * are checked against it. Parameters and gradients use the model's flat layout.
 *
 * @module
 */

import { headSize, type ModelConfig } from "../../model/config.ts";
import type { ParamLayout } from "../../model/params.ts";
import { attentionBackwardRef, attentionRef } from "./attention.ts";
import { crossEntropyBackwardRef, crossEntropyRef, lossMeanRef } from "./cross_entropy.ts";
import { keepRef } from "./dropout.ts";
import { embeddingBackwardRef, embeddingRef } from "./embedding.ts";
import { matmulBackwardRef, matmulRef } from "./matmul.ts";
import { rmsnormBackwardRef, rmsnormRef } from "./rmsnorm.ts";
import { ropeBackwardRef, ropeRef } from "./rope.ts";
import { swigluBackwardRef, swigluRef } from "./swiglu.ts";

const IGNORE = 0xFFFFFFFF;

/** The dropout of one forward: the step's seeds and the micro-step. */
export interface DropoutRef {
  /** Probability. */
  p: number;
  /** Run seed. */
  run: number;
  /** Step. */
  step: number;
  /** Micro-step (selects the streams). */
  micro: number;
}

/** The fused projections of a layer, as the GPU model names them. */
export type ProjectionSiteRef = "qkv" | "attnOut" | "gateUp" | "down";

/** Something added to projections (LoRA): its forward contribution and its backward. */
export interface ProjectionHook {
  /** Returns y plus the hook's output at layer l's `site`, whose input is x. */
  forward(l: number, site: ProjectionSiteRef, x: Float64Array, y: Float64Array): Float64Array;
  /** Takes dy of that output, keeps its own gradients, returns what it adds to dx (or null). */
  backward(l: number, site: ProjectionSiteRef, dy: Float64Array): Float64Array | null;
}

/** Inputs of one forward. */
export interface ModelInputs {
  /** Tokens (B·T). */
  tokens: ArrayLike<number>;
  /** Targets (B·T). */
  targets: ArrayLike<number>;
  /** Batch size. */
  B: number;
  /** Tokens per sequence. */
  T: number;
  /** Dropout, when training with it. */
  dropout?: DropoutRef;
  /** Adapters on the projections. */
  projections?: ProjectionHook;
}

function slice(flat: Float64Array, t: { offset: number; length: number }): Float64Array {
  return flat.subarray(t.offset, t.offset + t.length);
}

function linear(x: Float64Array, w: Float64Array, inputs: number, outputs: number): Float64Array {
  return matmulRef(x, w, { m: x.length / inputs, n: outputs, k: inputs, transposeB: true });
}

function mask(values: Float64Array, drop: DropoutRef | undefined, stream: number, L: number): Float64Array {
  if (!drop || drop.p === 0) return values;
  const s = drop.micro * (2 * L + 1) + stream;
  return values.map((v, i) => keepRef(drop.run, drop.step, s, i, drop.p) ? v / (1 - drop.p) : 0);
}

/**
 * The mean loss of the model on one batch, and its gradient with respect to
 * every parameter (scaled by `scale`, as the GPU backward's loss scale).
 *
 * @param config The model.
 * @param layout Its parameter layout.
 * @param params Flat parameters (layout.total).
 * @param inputs Tokens, targets, shape, dropout.
 * @param scale Multiplier of the loss gradient.
 * @returns The mean loss and the flat gradient.
 */
export function modelRef(
  config: ModelConfig,
  layout: ParamLayout,
  params: Float64Array,
  inputs: ModelInputs,
  scale = 1,
): { loss: number; grads: Float64Array } {
  const { B, T, tokens, targets, dropout: drop } = inputs;
  const C = config.n_embd;
  const V = config.vocab_size;
  const H = config.mlp_hidden;
  const L = config.n_layer;
  const HS = headSize(config);
  const QKV = (config.n_head + 2 * config.n_kv_head) * HS;
  const sizes = { B, T, NH: config.n_head, NKV: config.n_kv_head, HS };
  const eps = config.norm_eps;
  const attnScale = 1 / Math.sqrt(HS);
  const hook = inputs.projections;
  const project = (l: number, site: ProjectionSiteRef, x: Float64Array, y: Float64Array) =>
    hook ? hook.forward(l, site, x, y) : y;
  const projectBack = (l: number, site: ProjectionSiteRef, dy: Float64Array, dx: Float64Array) => {
    const extra = hook?.backward(l, site, dy);
    return extra ? dx.map((v, i) => v + extra[i]) : dx;
  };
  const qkvWeight = (l: number) =>
    params.subarray(layout.layers[l].qkv.offset, layout.layers[l].qkv.offset + QKV * C);
  const gateUpWeight = (l: number) =>
    params.subarray(layout.layers[l].gateUp.offset, layout.layers[l].gateUp.offset + 2 * H * C);

  // Forward, keeping what the backward needs.
  const saved: {
    resid: Float64Array;
    ln1: Float64Array;
    qkv: Float64Array;
    atty: Float64Array;
    residMid: Float64Array;
    ln2: Float64Array;
    gateUp: Float64Array;
    hidden: Float64Array;
  }[] = [];
  let x = mask(embeddingRef(tokens, slice(params, layout.embedding), C), drop, 0, L);
  for (let l = 0; l < L; l++) {
    const w = layout.layers[l];
    const ln1 = rmsnormRef(x, slice(params, w.attnNorm), eps).out;
    const qkv = ropeRef(project(l, "qkv", ln1, linear(ln1, qkvWeight(l), C, QKV)), sizes, config.rope_theta);
    const atty = attentionRef(qkv, sizes, attnScale).out;
    const attnBranch = mask(
      project(l, "attnOut", atty, linear(atty, slice(params, w.attnOut), config.n_head * HS, C)),
      drop,
      1 + 2 * l,
      L,
    );
    const residMid = x.map((v, i) => v + attnBranch[i]);
    const ln2 = rmsnormRef(residMid, slice(params, w.mlpNorm), eps).out;
    const gateUp = project(l, "gateUp", ln2, linear(ln2, gateUpWeight(l), C, 2 * H));
    const hidden = swigluRef(gateUp, H);
    const mlpBranch = mask(
      project(l, "down", hidden, linear(hidden, slice(params, w.down), H, C)),
      drop,
      2 + 2 * l,
      L,
    );
    saved.push({ resid: x, ln1, qkv, atty, residMid, ln2, gateUp, hidden });
    x = residMid.map((v, i) => v + mlpBranch[i]);
  }
  const lnf = rmsnormRef(x, slice(params, layout.finalNorm), eps).out;
  const logits = linear(lnf, slice(params, layout.lmHead), C, V);
  const { losses } = crossEntropyRef(logits, targets, V, IGNORE);
  const loss = lossMeanRef(losses, targets, IGNORE).mean;

  // Backward.
  const grads = new Float64Array(params.length);
  const addInto = (t: { offset: number; length: number }, g: ArrayLike<number>) => {
    for (let i = 0; i < t.length; i++) grads[t.offset + i] += g[i];
  };
  const linearBack = (
    dy: Float64Array,
    input: Float64Array,
    w: Float64Array,
    inputs: number,
    outputs: number,
  ) => matmulBackwardRef(dy, input, w, { m: input.length / inputs, n: outputs, k: inputs, transposeB: true });

  const dlogits = crossEntropyBackwardRef(logits, targets, V, IGNORE, scale);
  const head = linearBack(dlogits, lnf, slice(params, layout.lmHead), C, V);
  addInto(layout.lmHead, head.db);
  const finalNorm = rmsnormBackwardRef(head.da, x, slice(params, layout.finalNorm), eps);
  addInto(layout.finalNorm, finalNorm.dweight);
  let dx = finalNorm.dx;
  for (let l = L - 1; l >= 0; l--) {
    const w = layout.layers[l];
    const s = saved[l];
    const dMlp = mask(dx, drop, 2 + 2 * l, L);
    const down = linearBack(dMlp, s.hidden, slice(params, w.down), H, C);
    addInto(w.down, down.db);
    const dGateUp = swigluBackwardRef(projectBack(l, "down", dMlp, down.da), s.gateUp, H);
    const gateUp = linearBack(dGateUp, s.ln2, gateUpWeight(l), C, 2 * H);
    addInto({ offset: w.gateUp.offset, length: 2 * H * C }, gateUp.db);
    const norm2 = rmsnormBackwardRef(
      projectBack(l, "gateUp", dGateUp, gateUp.da),
      s.residMid,
      slice(params, w.mlpNorm),
      eps,
    );
    addInto(w.mlpNorm, norm2.dweight);
    dx = dx.map((v, i) => v + norm2.dx[i]);

    const dAttn = mask(dx, drop, 1 + 2 * l, L);
    const out = linearBack(dAttn, s.atty, slice(params, w.attnOut), config.n_head * HS, C);
    addInto(w.attnOut, out.db);
    const dqkv = ropeBackwardRef(
      attentionBackwardRef(projectBack(l, "attnOut", dAttn, out.da), s.qkv, sizes, attnScale),
      sizes,
      config.rope_theta,
    );
    const qkv = linearBack(dqkv, s.ln1, qkvWeight(l), C, QKV);
    addInto({ offset: w.qkv.offset, length: QKV * C }, qkv.db);
    const norm1 = rmsnormBackwardRef(
      projectBack(l, "qkv", dqkv, qkv.da),
      s.resid,
      slice(params, w.attnNorm),
      eps,
    );
    addInto(w.attnNorm, norm1.dweight);
    dx = dx.map((v, i) => v + norm1.dx[i]);
  }
  const dEmbedding = mask(dx, drop, 0, L);
  addInto(layout.embedding, embeddingBackwardRef(tokens, dEmbedding, new Float64Array(V * C), C));
  return { loss, grads };
}
