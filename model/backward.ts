/**
 * The model's hand-written backward: the forward's ops in reverse, from the
 * activations the forward saved. Parameter gradients are added into the flat
 * gradient buffer (micro-batches accumulate; tied embeddings sum both uses);
 * the residual stream's gradient is one buffer that each norm's backward adds
 * into; the logits and the gate/up activations are overwritten by their own
 * gradients, which saves two large buffers. Under LoRA the base is frozen: only
 * input gradients flow through its weights, the adapters add theirs at each
 * adapted projection, and nothing below the first layer's attention is computed.
 *
 * @module
 */

import { attentionBackward } from "../kernels/attention.ts";
import { crossEntropyBackward } from "../kernels/cross_entropy.ts";
import { dropoutBackward } from "../kernels/dropout.ts";
import { embeddingBackward } from "../kernels/embedding.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { rmsnormBackward } from "../kernels/rmsnorm.ts";
import { ropeBackward } from "../kernels/rope.ts";
import { swigluBackward } from "../kernels/swiglu.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { linearBackward } from "./linear.ts";
import type { LoraAdapters } from "./lora_adapters.ts";
import { type Batch, type DropoutStep, dropoutStream, type Llama } from "./model.ts";

/**
 * Records the backward of `model`'s last forward on `batch`.
 *
 * @param model A model created with `training: true`.
 * @param rec The recorder (after the forward).
 * @param args The batch with its embedding index, the forward's dropout, the loss-gradient scale,
 *   and the model's LoRA adapters (when its base is frozen).
 */
export function recordBackward(
  model: Llama,
  rec: Recorder,
  args: { batch: Batch; dropout?: DropoutStep; scale: number | Tensor; lora: LoraAdapters | null },
): void {
  const { config, acts, views, grads } = model;
  const { lora } = args;
  const g = acts.grad;
  if (!g || (!grads && !lora?.grads) || (grads && !args.batch.index)) {
    throw new Error("backward needs a model created with training: true and a batch with an embedding index");
  }
  const W = model.weights16 ?? model.params;
  const heads = { nHead: config.n_head, nKvHead: config.n_kv_head };
  const drop = args.dropout && config.dropout > 0 ? args.dropout : undefined;
  // The gradient entering a dropped-out branch: the residual gradient through the forward's mask.
  const undrop = (site: number): Tensor => {
    if (!drop) return g.resid;
    const stream = dropoutStream(config, drop, site);
    dropoutBackward(rec, { dx: g.branch, dout: g.resid, p: config.dropout, seed: drop.seed, stream });
    return g.branch;
  };

  // Loss, lm_head and the final norm; g.resid then holds d(residual after the last layer).
  crossEntropyBackward(rec, {
    dlogits: acts.logits,
    logits: acts.logits,
    lse: acts.lseLogits,
    targets: args.batch.targets,
    count: acts.count,
    scale: args.scale,
  });
  linearBackward(rec, {
    dx: g.ln,
    dweight: grads ? views.lmHead(grads) : undefined,
    dy: acts.logits,
    x: acts.lnf,
    weight: views.lmHead(W),
  });
  rmsnormBackward(rec, {
    dx: g.resid,
    dweight: grads ? views.finalNorm(grads) : undefined,
    dout: g.ln,
    x: acts.residOut,
    weight: views.finalNorm(model.params),
    rstd: acts.rstdf,
  });

  for (let l = config.n_layer - 1; l >= 0; l--) {
    const a = acts.layers[l];
    const w = views.layer(W, l);
    const dw = grads ? views.layer(grads, l) : undefined;
    const gains = views.layer(model.params, l);

    const dMlp = undrop(2 + 2 * l);
    linearBackward(rec, { dx: g.hidden, dweight: dw?.down, dy: dMlp, x: a.hidden, weight: w.down });
    lora?.backward(rec, {
      layer: l,
      site: "down",
      x: a.hidden,
      dy: dMlp,
      dx: g.hidden,
      dropout: args.dropout,
    });
    swigluBackward(rec, { dgateUp: a.gateUp, dout: g.hidden, gateUp: a.gateUp });
    linearBackward(rec, { dx: g.ln, dweight: dw?.gateUp, dy: a.gateUp, x: a.ln2, weight: w.gateUp });
    lora?.backward(rec, {
      layer: l,
      site: "gateUp",
      x: a.ln2,
      dy: a.gateUp,
      dx: g.ln,
      dropout: args.dropout,
    });
    rmsnormBackward(rec, {
      dx: g.resid,
      dweight: dw?.mlpNorm,
      dout: g.ln,
      x: a.residMid,
      weight: gains.mlpNorm,
      rstd: a.rstd2,
      accumulate: true,
    });

    const dAttn = undrop(1 + 2 * l);
    linearBackward(rec, { dx: g.atty, dweight: dw?.attnOut, dy: dAttn, x: a.atty, weight: w.attnOut });
    lora?.backward(rec, {
      layer: l,
      site: "attnOut",
      x: a.atty,
      dy: dAttn,
      dx: g.atty,
      dropout: args.dropout,
    });
    attentionBackward(rec, { dqkv: g.qkv, dout: g.atty, out: a.atty, lse: a.lse, qkv: a.qkv, ...heads });
    ropeBackward(rec, { dqkv: g.qkv, ...heads, theta: config.rope_theta });
    linearBackward(rec, { dx: g.ln, dweight: dw?.qkv, dy: g.qkv, x: a.ln1, weight: w.qkv });
    lora?.backward(rec, { layer: l, site: "qkv", x: a.ln1, dy: g.qkv, dx: g.ln, dropout: args.dropout });
    if (!grads && l === 0) return; // a frozen base needs no gradient below its first adapter's input
    rmsnormBackward(rec, {
      dx: g.resid,
      dweight: dw?.attnNorm,
      dout: g.ln,
      x: a.resid,
      weight: gains.attnNorm,
      rstd: a.rstd1,
      accumulate: true,
    });
  }

  if (grads) {
    embeddingBackward(rec, { dweight: views.embedding(grads), dout: undrop(0), index: args.batch.index! });
  }
}
