/**
 * LoRA adapters on the GPU: A and B of every module in one flat parameter
 * buffer (and one flat gradient buffer, the only gradients a LoRA run has), and
 * the two hooks the model calls around each adapted projection.
 *
 * Forward, per module, after the frozen y = x·Wᵀ of its fused projection:
 * h = dropout(x)·Aᵀ (N, r), saved for the backward; y[:, block] += s·h·Bᵀ with
 * s = alpha/rank. Backward, with dy the gradient of the fused output:
 * g = s·dy[:, block]; dB += gᵀ·h; dh = g·B; dA += dhᵀ·dropout(x) (the mask
 * regenerated from its seed); dx += dropout'(dh·A). A module's block of
 * columns is reached with the column kernels, so the base keeps its fused
 * matmuls and the file keeps PEFT's per-projection matrices.
 *
 * Adapter gradients are added into (+=): micro-batches accumulate.
 *
 * @module
 */

import { addColumns, copyColumns } from "../kernels/columns.ts";
import type { Gpu } from "../kernels/device.ts";
import { dropout, dropoutBackward } from "../kernels/dropout.ts";
import { matmul } from "../kernels/matmul.ts";
import type { Recorder } from "../kernels/recorder.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { ModelConfig } from "./config.ts";
import { rows } from "./linear.ts";
import {
  type LoraConfig,
  type LoraLayout,
  loraLayout,
  type LoraModule,
  loraScale,
  type ProjectionSite,
} from "./lora.ts";
import type { DropoutStep } from "./model.ts";

/**
 * Dropout streams of adapters start here, far above the model's own
 * (2·n_layer + 1 per micro-step), so no adapter mask repeats a model mask.
 */
const LORA_STREAM_BASE = 0x40000000;

/**
 * Adapters for every module of one model, bound to a row count N = B·T.
 *
 * @example
 * ```ts
 * const adapters = new LoraAdapters(gpu, config, LORA_DEFAULTS, { rows: B * T, training: true });
 * const model = new Llama(gpu, config, { batchSize: B, training: true, lora: adapters });
 * ```
 */
export class LoraAdapters {
  /** The device. */
  readonly gpu: Gpu;
  /** Rank, alpha, dropout, targets. */
  readonly config: LoraConfig;
  /** Where each A and B lives in the flat buffers. */
  readonly layout: LoraLayout;
  /** All A and B values, f32 (layout.total). */
  readonly params: Tensor;
  /** Their gradients, f32 (layout.total); null for inference. */
  readonly grads: Tensor | null;
  /** Rows per forward. */
  readonly rows: number;

  #scale: number;
  #bySite = new Map<string, LoraModule[]>();
  #hidden = new Map<LoraModule, Tensor>();
  // Scratch, each shared by uses that never overlap: `#wide` (N·max out) holds a module's
  // h·Bᵀ in the forward and its scaled dy block in the backward; `#dropped` (N·max in) holds
  // dropout(x), then (after dA has read it) the gradient of dropout(x).
  #wide: Tensor;
  #dh: Tensor | null;
  #dropped: Tensor | null;

  /**
   * Allocates the adapter buffers (uninitialised: see {@link LoraAdapters.upload}) and
   * the per-module saved h for `rows` rows.
   *
   * @param gpu The device.
   * @param model The base architecture.
   * @param config The adapter settings.
   * @param shape Rows per forward (B·T) and whether to allocate gradients and backward scratch.
   * @example
   * ```ts
   * const adapters = new LoraAdapters(gpu, config, LORA_DEFAULTS, { rows: B * T, training: true });
   * adapters.upload(initialLoraParameters(adapters.layout, new Rng(1337)));
   * const model = new Llama(gpu, config, { batchSize: B, training: true, lora: adapters });
   * ```
   */
  constructor(gpu: Gpu, model: ModelConfig, config: LoraConfig, shape: { rows: number; training: boolean }) {
    this.gpu = gpu;
    this.config = config;
    this.layout = loraLayout(model, config);
    this.rows = shape.rows;
    this.#scale = loraScale(config);
    const N = shape.rows;
    const r = config.rank;
    this.params = gpu.tensor([this.layout.total], "f32", { label: "lora params" });
    this.grads = shape.training ? gpu.tensor([this.layout.total], "f32", { label: "lora grads" }) : null;
    for (const m of this.layout.modules) {
      const key = siteKey(m.layer, m.site);
      this.#bySite.set(key, [...(this.#bySite.get(key) ?? []), m]);
      this.#hidden.set(m, gpu.tensor([N, r], "f32", { label: `lora h layer ${m.layer} ${m.target}` }));
    }
    const maxOut = Math.max(...this.layout.modules.map((m) => m.outFeatures));
    const maxIn = Math.max(...this.layout.modules.map((m) => m.inFeatures));
    const dropping = config.dropout > 0;
    this.#wide = gpu.tensor([N * maxOut], "f32", { label: "lora scratch (N, out)" });
    this.#dh = shape.training ? gpu.tensor([N, r], "f32", { label: "lora d h" }) : null;
    this.#dropped = dropping && shape.training
      ? gpu.tensor([N * maxIn], "f32", { label: "lora scratch (N, in)" })
      : null;
  }

  /**
   * Replaces every A and B.
   *
   * @param values Flat values (layout.total).
   */
  upload(values: Float32Array): void {
    this.gpu.write(this.params, values);
  }

  /**
   * Reads every A and B back.
   *
   * @returns Flat values (layout.total).
   */
  download(): Promise<Float32Array> {
    return this.gpu.readFloats(this.params);
  }

  /**
   * Records the adapters' part of one fused projection: y[:, block] += s·dropout(x)·Aᵀ·Bᵀ
   * for each module there (call after the frozen y = x·Wᵀ).
   *
   * @param rec The recorder.
   * @param args Layer and site; `x` (…, in) and `y` (…, out of the fused matmul); dropout (training only).
   */
  forward(
    rec: Recorder,
    args: { layer: number; site: ProjectionSite; x: Tensor; y: Tensor; dropout?: DropoutStep },
  ): void {
    const x = rows(args.x);
    const y = rows(args.y);
    const N = x.shape[0];
    for (const m of this.#bySite.get(siteKey(args.layer, args.site)) ?? []) {
      const h = this.#hidden.get(m)!;
      const input = this.#input(rec, m, x, args.dropout);
      matmul(rec, { out: h, a: input, b: this.#a(this.params, m), transposeB: true });
      const delta = this.#wide.view(0, [N, m.outFeatures], "lora delta");
      matmul(rec, { out: delta, a: h, b: this.#b(this.params, m), transposeB: true });
      addColumns(rec, { out: y, x: delta, column: m.column, scale: this.#scale });
    }
  }

  /**
   * Records the adapters' backward at one fused projection: dA and dB added into
   * `grads`, and their input gradient added into `dx` (after the frozen dx = dy·W).
   *
   * @param rec The recorder (after the forward).
   * @param args Layer and site; `x` (…, in) as in the forward, `dy` (…, out) the fused output's
   *   gradient, `dx` (…, in) to add into; the forward's dropout.
   */
  backward(
    rec: Recorder,
    args: { layer: number; site: ProjectionSite; x: Tensor; dy: Tensor; dx: Tensor; dropout?: DropoutStep },
  ): void {
    const { grads } = this;
    if (!grads || !this.#dh) {
      throw new Error("LoRA backward needs adapters built with training: true");
    }
    const x = rows(args.x);
    const dy = rows(args.dy);
    const dx = rows(args.dx);
    const N = x.shape[0];
    for (const m of this.#bySite.get(siteKey(args.layer, args.site)) ?? []) {
      const g = this.#wide.view(0, [N, m.outFeatures], "lora d out");
      copyColumns(rec, { out: g, x: dy, column: m.column, scale: this.#scale });
      const h = this.#hidden.get(m)!;
      matmul(rec, { out: this.#b(grads, m), a: g, b: h, transposeA: true, accumulate: true });
      matmul(rec, { out: this.#dh, a: g, b: this.#b(this.params, m) });
      const input = this.#input(rec, m, x, args.dropout);
      matmul(rec, { out: this.#a(grads, m), a: this.#dh, b: input, transposeA: true, accumulate: true });
      const stream = this.#stream(m, args.dropout);
      if (stream === null) {
        matmul(rec, { out: dx, a: this.#dh, b: this.#a(this.params, m), accumulate: true });
      } else {
        const dd = this.#dropped!.view(0, [N, m.inFeatures], "lora d dropped x");
        matmul(rec, { out: dd, a: this.#dh, b: this.#a(this.params, m) });
        dropoutBackward(rec, {
          dx,
          dout: dd,
          p: this.config.dropout,
          seed: args.dropout!.seed,
          stream,
          accumulate: true,
        });
      }
    }
  }

  /** Frees every buffer. */
  release(): void {
    const all = [this.params, this.grads, this.#wide, this.#dh, this.#dropped];
    for (const t of [...all, ...this.#hidden.values()]) if (t) this.gpu.release(t);
  }

  /** The module's input: x itself, or dropout(x) in scratch (regenerated identically in the backward). */
  #input(rec: Recorder, m: LoraModule, x: Tensor, drop: DropoutStep | undefined): Tensor {
    const stream = this.#stream(m, drop);
    if (stream === null) return x;
    const out = this.#dropped!.view(0, [x.shape[0], m.inFeatures], "lora dropped x");
    dropout(rec, { out, x, p: this.config.dropout, seed: drop!.seed, stream });
    return out;
  }

  /** The dropout stream of a module in a micro-step, or null without dropout. */
  #stream(m: LoraModule, drop: DropoutStep | undefined): number | null {
    if (!drop || this.config.dropout === 0 || !this.#dropped) return null;
    return loraDropoutStream(this.layout, m, drop.micro);
  }

  #a(flat: Tensor, m: LoraModule): Tensor {
    return flat.view(m.a.offset, m.a.shape, `${flat.label} ${m.a.name}`);
  }

  #b(flat: Tensor, m: LoraModule): Tensor {
    return flat.view(m.b.offset, m.b.shape, `${flat.label} ${m.b.name}`);
  }
}

/**
 * The dropout stream of an adapter's input in a micro-step (what the CPU reference regenerates).
 *
 * @param layout The adapter layout.
 * @param m The module.
 * @param micro The micro-step.
 * @returns The stream number.
 * @example
 * ```ts
 * const stream = loraDropoutStream(layout, layout.modules[0], 0);
 * ```
 */
export function loraDropoutStream(layout: LoraLayout, m: LoraModule, micro: number): number {
  return LORA_STREAM_BASE + micro * layout.modules.length + layout.modules.indexOf(m);
}

function siteKey(layer: number, site: ProjectionSite): string {
  return `${layer} ${site}`;
}
