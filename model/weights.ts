/**
 * Named views into a flat buffer laid out by the parameter table: the same
 * offsets address the parameters, the gradients and the f16 weight copy.
 *
 * @module
 */

import type { LayerWeights } from "../kernels/decode_layer.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { ModelConfig } from "./config.ts";
import type { ParamLayout, ParamTensor } from "./params.ts";

/**
 * One layer's tensors as views of a flat buffer, ready to bind to kernels (the
 * kernels' `LayerWeights`).
 *
 * @example
 * ```ts
 * const layer0: LayerViews = model.views.layer(model.params, 0);
 * console.log(layer0.qkv.shape, await gpu.read(layer0.attnNorm)); // [384, 128] Float32Array(128) [1, 1, ...]
 * ```
 */
export type LayerViews = LayerWeights;

/**
 * Views of the model's tensors in any flat buffer with the parameter layout:
 * the same calls address the parameters, the gradients and the f16 weights.
 *
 * @example
 * ```ts
 * const views: FlatViews = model.views;
 * const embedding = views.embedding(model.params); // (V, C)
 * const dEmbedding = views.embedding(model.grads!); // its gradient, same shape
 * ```
 */
export class FlatViews {
  #layout: ParamLayout;
  #width: number;

  /**
   * Binds the views to a layout.
   *
   * @param layout The parameter table.
   * @param config The model (for n_embd).
   */
  constructor(layout: ParamLayout, config: ModelConfig) {
    this.#layout = layout;
    this.#width = config.n_embd;
  }

  /**
   * model.embed_tokens.weight (V, C).
   *
   * @param flat A flat buffer with the parameter layout.
   * @returns The view.
   */
  embedding(flat: Tensor): Tensor {
    return view(flat, this.#layout.embedding);
  }

  /**
   * lm_head.weight (V, C), the embedding itself when tied.
   *
   * @param flat A flat buffer with the parameter layout.
   * @returns The view.
   */
  lmHead(flat: Tensor): Tensor {
    return view(flat, this.#layout.lmHead);
  }

  /**
   * model.norm.weight (C).
   *
   * @param flat A flat buffer with the parameter layout.
   * @returns The view.
   */
  finalNorm(flat: Tensor): Tensor {
    return view(flat, this.#layout.finalNorm);
  }

  /**
   * Layer `l`'s tensors.
   *
   * @param flat A flat buffer.
   * @param l The layer.
   * @returns Its views.
   */
  layer(flat: Tensor, l: number): LayerViews {
    const w = this.#layout.layers[l];
    const stacked = (offset: number, rows: number, name: string) =>
      flat.view(offset, [rows, this.#width], `${flat.label} layer ${l} ${name}`);
    return {
      attnNorm: view(flat, w.attnNorm),
      qkv: stacked(w.qkv.offset, w.qkv.rows, "qkv"),
      attnOut: view(flat, w.attnOut),
      mlpNorm: view(flat, w.mlpNorm),
      gateUp: stacked(w.gateUp.offset, w.gateUp.rows, "gate_up"),
      down: view(flat, w.down),
    };
  }
}

function view(flat: Tensor, t: ParamTensor): Tensor {
  return flat.view(t.offset, t.shape, `${flat.label} ${t.name}`);
}
