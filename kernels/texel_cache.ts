/**
 * Kept staging copies: textures that outlive a recording, so a texel kernel
 * reads a tensor without copying it first (see `texels.ts` for why kernels read
 * textures on software adapters).
 *
 * On lavapipe a copy into a texture also ends the compute pass, and the two cost
 * more than a small dispatch, so a decoding step that copied its activations and
 * key/value caches before every matmul and attention spent a quarter of its time
 * copying. A cache keeps two kinds of copies:
 *
 * - **constants** (a generator's weights): copied on first use, then read as
 *   they are;
 * - **mirrored** tensors (a decoding step's activations and caches): the kernels
 *   that write them write the kept copy as well, once it exists, so it stays
 *   current and is copied again only after a write that did not keep it.
 *
 * The cache follows every recording on its device, given the cache or not: a
 * dispatch that binds a mirrored tensor (or a copy or clear into it) leaves its
 * kept copy stale, unless the kernel wrote the copy too and says so
 * ({@link TexelCache.markCurrent}). What a recording changes takes effect when it
 * is finished, so one that is dropped unsubmitted leaves the cache as it was.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import type { Binding } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { formatOf, makeStaging, type StagedTexels, type Staging, textureSize } from "./texels.ts";

/** A mirrored tensor and its kept copy, made when a kernel first stages it. */
interface Mirror {
  tensor: Tensor;
  staging: Staging | null;
}

/**
 * Staged copies kept across recordings: of constant tensors, copied once, and of
 * mirrored tensors, kept current by the kernels that write them. Pass it to a
 * recorder (`texelCache`); `stageTexels` then returns a kept copy instead
 * of copying, and producer kernels (`rmsnormForward`, `swigluForward`,
 * the decoding attention and cache writes) write the mirrors they produce.
 *
 * Recordings must be submitted in the order they were made; mirrored tensors
 * must be written only by recorded work (not by `gpu.write`), or their kept
 * copies go stale unnoticed.
 *
 * @example
 * ```ts
 * // Weights copied once; ln1 written by its norm kernel into its kept copy too.
 * const texels = new TexelCache(gpu, [model.params], { mirrored: [acts.ln1] });
 * const rec = gpu.recorder({ texelCache: texels });
 * ```
 */
export class TexelCache {
  readonly #gpu: Gpu;
  readonly #buffers: GPUBuffer[];
  readonly #constants = new Map<string, Staging>();
  /** Mirrors by buffer: each mirrored tensor has a buffer of its own. */
  readonly #mirrors = new Map<GPUBuffer, Mirror>();
  /** The mirrors whose copy is current as of the last finished recording. */
  readonly #current = new Set<Mirror>();
  /** Changes to #current made by recordings not yet finished. */
  readonly #pending = new WeakMap<Recorder, Map<Mirror, boolean>>();

  /**
   * Makes an empty cache; textures are made on first use.
   *
   * @param gpu The device.
   * @param constants Tensors (and so every view of their buffers) whose contents
   *   stay fixed from the first recording that stages them until {@link release}.
   * @param options `mirrored`: tensors to keep current copies of; each must have
   *   a buffer to itself, and be stageable (see `canStageTexels`).
   * @throws {GpuError} When a mirrored tensor cannot be staged or shares a buffer with another.
   */
  constructor(gpu: Gpu, constants: readonly Tensor[], options: { mirrored?: readonly Tensor[] } = {}) {
    this.#gpu = gpu;
    this.#buffers = constants.map((t) => t.buffer);
    const mirrored = options.mirrored ?? [];
    for (const [i, t] of mirrored.entries()) {
      const shared = [...this.#buffers, ...mirrored.slice(0, i).map((m) => m.buffer)].includes(t.buffer);
      if (shared || textureSize(gpu, t) === null) {
        throw new GpuError(
          `TexelCache: mirrored tensor "${t.label}" must have a buffer of its own and a whole number of ` +
            "texels (a length that is a multiple of 4) that fits one texture",
        );
      }
    }
    for (const tensor of mirrored) this.#mirrors.set(tensor.buffer, { tensor, staging: null });
    gpu.texelCaches.add(this);
  }

  /**
   * Whether `tensor` lives in one of the constant buffers, or is a mirrored tensor.
   *
   * @param tensor The tensor.
   * @returns True when {@link TexelCache.stage} keeps its copy.
   */
  holds(tensor: Tensor): boolean {
    return this.#buffers.includes(tensor.buffer) || this.#mirrorOf(tensor) !== undefined;
  }

  /**
   * The kept copy of `tensor`, recording a copy into it when there is none yet
   * (or, for a mirrored tensor, when it is stale).
   *
   * @param rec The recorder.
   * @param tensor A tensor this cache {@link TexelCache.holds} and `canStageTexels` accepts.
   * @returns The texture's view, width and format.
   */
  stage(rec: Recorder, tensor: Tensor): StagedTexels {
    const mirror = this.#mirrorOf(tensor);
    if (mirror) {
      mirror.staging ??= this.#make(`mirror of ${tensor.label}`, tensor);
      if (!this.#isCurrent(rec, mirror)) {
        rec.copyToTexture(mirror.staging.texture, tensor);
        this.#set(rec, mirror, true);
      }
      return mirror.staging;
    }
    const key = `${
      this.#buffers.indexOf(tensor.buffer)
    } ${tensor.byteOffset} ${tensor.length} ${tensor.dtype}`;
    let staging = this.#constants.get(key);
    if (!staging) {
      staging = this.#make(`constant ${tensor.label}`, tensor);
      rec.copyToTexture(staging.texture, tensor);
      this.#constants.set(key, staging);
    }
    return staging;
  }

  /**
   * For a kernel about to write `tensor`: the kept copy to write as well, texel i
   * holding elements 4i..4i+3, or null when there is none to keep (the tensor is
   * not mirrored, or no kernel has staged it yet). A kernel that writes only part
   * of the tensor (`partial`) gets it only while it is current, since the rest
   * must already match. After the dispatch, call {@link TexelCache.markCurrent}.
   *
   * @param rec The recorder.
   * @param tensor The tensor the kernel writes.
   * @param options `partial`: the kernel writes only some of its elements.
   * @returns The copy's view, width and format, or null.
   */
  mirror(rec: Recorder, tensor: Tensor, options: { partial?: boolean } = {}): StagedTexels | null {
    const mirror = this.#mirrorOf(tensor);
    if (!mirror?.staging || (options.partial && !this.#isCurrent(rec, mirror))) return null;
    return mirror.staging;
  }

  /**
   * Records that the last dispatch wrote `tensor`'s kept copy along with it (as
   * {@link TexelCache.mirror} returned it), so the copy is current.
   *
   * @param rec The recorder.
   * @param tensor The mirrored tensor.
   */
  markCurrent(rec: Recorder, tensor: Tensor): void {
    const mirror = this.#mirrorOf(tensor);
    if (mirror) this.#set(rec, mirror, true);
  }

  /**
   * Marks stale the kept copy of every mirrored tensor that `binding` may write:
   * the recorder calls it for each buffer a dispatch binds and each copy or clear target.
   *
   * @param rec The recorder.
   * @param binding A tensor or buffer range (texture views are ignored).
   */
  touch(rec: Recorder, binding: Binding): void {
    const mirror = "buffer" in binding ? this.#mirrors.get(binding.buffer) : undefined;
    if (mirror) this.#set(rec, mirror, false);
  }

  /**
   * Applies what `rec` recorded to the cache; the recorder calls it when it finishes.
   *
   * @param rec The recorder.
   */
  commit(rec: Recorder): void {
    const changes = this.#pending.get(rec);
    if (!changes) return;
    for (const [mirror, current] of changes) {
      if (current) this.#current.add(mirror);
      else this.#current.delete(mirror);
    }
    this.#pending.delete(rec);
  }

  /** Frees the textures; recordings stop tracking the cache. */
  release(): void {
    this.#gpu.texelCaches.delete(this);
    for (const { texture } of this.#constants.values()) this.#gpu.destroyTexture(texture);
    this.#constants.clear();
    for (const mirror of this.#mirrors.values()) {
      if (mirror.staging) this.#gpu.destroyTexture(mirror.staging.texture);
      mirror.staging = null;
    }
    this.#current.clear();
  }

  #mirrorOf(tensor: Tensor): Mirror | undefined {
    const mirror = this.#mirrors.get(tensor.buffer);
    const { tensor: m } = mirror ?? {};
    return m && m.byteOffset === tensor.byteOffset && m.length === tensor.length && m.dtype === tensor.dtype
      ? mirror
      : undefined;
  }

  #isCurrent(rec: Recorder, mirror: Mirror): boolean {
    return this.#pending.get(rec)?.get(mirror) ?? this.#current.has(mirror);
  }

  #set(rec: Recorder, mirror: Mirror, current: boolean): void {
    let changes = this.#pending.get(rec);
    if (!changes) this.#pending.set(rec, changes = new Map());
    changes.set(mirror, current);
  }

  #make(label: string, tensor: Tensor): Staging {
    return makeStaging(this.#gpu, label, textureSize(this.#gpu, tensor)!, formatOf(tensor));
  }
}
