/**
 * Errors of the GPU layer. Each carries a one-line message that says what went
 * wrong and what to do; the CLIs print `error: <message>` and exit non-zero.
 *
 * @module
 */

/**
 * Any failure of the GPU layer: no adapter, a bad shader, out of memory, a lost
 * device. Catch it to print the one-line message (and the detail lines, if any)
 * instead of a stack trace.
 *
 * @example
 * ```ts
 * try {
 *   await gpu.sync();
 * } catch (error) {
 *   if (error instanceof GpuError) console.error(`error: ${error.message}\n${error.detail}`);
 *   else throw error;
 * }
 * ```
 */
export class GpuError extends Error {
  /** Extra lines (WGSL source around a compile error, say) shown below the message. */
  readonly detail: string;

  /**
   * Creates the error.
   *
   * @param message One line: what failed and what to do.
   * @param detail Optional further lines.
   * @example
   * ```ts
   * throw new GpuError("Buffer too big; lower --batch_size");
   * ```
   */
  constructor(message: string, detail = "") {
    super(message);
    this.name = "GpuError";
    this.detail = detail;
  }
}

/**
 * No WebGPU adapter could be had at all; the message names the driver to install.
 *
 * @example
 * ```ts
 * try {
 *   await requestGpu();
 * } catch (error) {
 *   if (!(error instanceof NoAdapterError)) throw error;
 *   console.error(error.message); // "No WebGPU adapter found; install a GPU driver with Vulkan support, ..."
 * }
 * ```
 */
export class NoAdapterError extends GpuError {
  /**
   * Creates the error.
   *
   * @param vulkanOnly Only Vulkan was tried (the default on Linux); the message then says how to try OpenGL.
   * @example `throw new NoAdapterError();`
   */
  constructor(vulkanOnly = false) {
    super(
      "No WebGPU adapter found; install a GPU driver with Vulkan support, " +
        "or Mesa's software Vulkan driver to run on the CPU (apt-get install mesa-vulkan-drivers libvulkan1)" +
        (vulkanOnly ? "; or set DENO_WEBGPU_BACKEND=gl to try OpenGL, which has no f16" : ""),
    );
    this.name = "NoAdapterError";
  }
}

/**
 * The adapter lacks a feature the caller marked `"require"` in {@link GpuOptions}.
 *
 * @example
 * ```ts
 * const gpu = await requestGpu({ f16: "require" }).catch((error) => {
 *   if (error instanceof MissingFeatureError) return requestGpu({ f16: "off" }); // feature: "shader-f16"
 *   throw error;
 * });
 * ```
 */
export class MissingFeatureError extends GpuError {
  /** The WebGPU feature name, e.g. `shader-f16`. */
  readonly feature: string;

  /**
   * Creates the error.
   *
   * @param feature The missing WebGPU feature.
   * @param adapterName The adapter's description, for the message.
   * @example `throw new MissingFeatureError("shader-f16", "llvmpipe");`
   */
  constructor(feature: string, adapterName: string) {
    super(
      `The adapter "${adapterName}" lacks the WebGPU feature "${feature}"; ` +
        `use a GPU driver that offers it (Mesa's Vulkan driver does: apt-get install mesa-vulkan-drivers libvulkan1) or run without requiring it`,
    );
    this.name = "MissingFeatureError";
    this.feature = feature;
  }
}

/**
 * A WGSL module failed to compile; reported at the next {@link Gpu.check} after
 * its pipeline was created, with the offending lines in `detail`.
 *
 * @example
 * ```ts
 * try {
 *   await gpu.check();
 * } catch (error) {
 *   if (error instanceof ShaderCompileError) console.error(`${error.message}\n${error.detail}`);
 * }
 * ```
 */
export class ShaderCompileError extends GpuError {
  /**
   * Creates the error.
   *
   * @param message One line naming the shader, line:col and the compiler's complaint.
   * @param detail The offending WGSL lines with a caret.
   * @example `throw new ShaderCompileError("Shader \"x\" failed at 2:7: ...", "2 | let x: f32 = 1u;");`
   */
  constructor(message: string, detail: string) {
    super(message, detail);
    this.name = "ShaderCompileError";
  }
}

/**
 * A buffer could not be allocated: over a device limit (thrown at once), or out
 * of memory (thrown at the next {@link Gpu.check}). The message says what to lower.
 *
 * @example
 * ```ts
 * const config = trainConfig({ batch_size: 512, n_embd: 2048, n_head: 16 });
 * try {
 *   Trainer.create(gpu, config, modelConfigFor(config, data.meta.vocab_size), data);
 *   await gpu.check();
 * } catch (error) {
 *   if (error instanceof GpuOutOfMemoryError) console.error(error.message); // "...; lower batch_size, ..."
 * }
 * ```
 */
export class GpuOutOfMemoryError extends GpuError {
  /**
   * Creates the error.
   *
   * @param message One line naming the bytes asked for, the limit and what to lower.
   * @example `throw new GpuOutOfMemoryError("Buffer \"acts\" of 9 GB exceeds ...");`
   */
  constructor(message: string) {
    super(message);
    this.name = "GpuOutOfMemoryError";
  }
}

/**
 * The device was lost (driver reset, GPU removed, or destroyed while in use); the
 * {@link Gpu} cannot be used again. Thrown at the next synchronisation point and
 * passed to {@link Gpu.onLost} listeners.
 *
 * @example
 * ```ts
 * try {
 *   await trainer.step({ read: true });
 * } catch (error) {
 *   if (error instanceof DeviceLostError) console.error(error.message); // "...; check the driver ..."
 * }
 * ```
 */
export class DeviceLostError extends GpuError {
  /**
   * Creates the error.
   *
   * @param reason WebGPU's reason string.
   * @param message The driver's message.
   * @example `throw new DeviceLostError("unknown", "driver reset");`
   */
  constructor(reason: string, message: string) {
    super(
      `The GPU device was lost (${reason}${message ? `: ${message.trim()}` : ""}); ` +
        "check the driver (nvidia-smi, dmesg) and run again",
    );
    this.name = "DeviceLostError";
  }
}

/** Formats bytes for messages: `1.50 GiB`. */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(2)} ${units[unit]}`;
}
