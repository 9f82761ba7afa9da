/**
 * The safetensors format: an 8-byte little-endian header length, a JSON header
 * (`{name: {dtype, shape, data_offsets}}` plus `__metadata__` of strings), then
 * the raw little-endian tensor bytes. Reading validates the whole header against
 * the file before allocating anything; writing goes to a temporary file that is
 * synced and renamed, so the previous file survives until the new one is whole.
 *
 * @module
 */

/** Element types we read and write. */
export type SafetensorsDType = "F32" | "F16" | "BF16" | "U32" | "I32" | "U16" | "U8" | "I64";

const DTYPE_BYTES: Record<SafetensorsDType, number> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  U32: 4,
  I32: 4,
  U16: 2,
  U8: 1,
  I64: 8,
};

/** Largest header we accept: real headers are kilobytes; a crafted one must not make us allocate gigabytes. */
export const MAX_HEADER_BYTES = 64 * 1024 * 1024;

/**
 * A malformed or unreadable safetensors file; the message names the file and the problem.
 *
 * @example
 * ```ts
 * try {
 *   await loadCheckpoint("out/ckpt.safetensors");
 * } catch (error) {
 *   if (error instanceof SafetensorsError) console.error(error.message); // "out/ckpt.safetensors: ..."
 *   else throw error;
 * }
 * ```
 */
export class SafetensorsError extends Error {
  /**
   * Creates the error.
   *
   * @param path The file.
   * @param problem What is wrong with it.
   */
  constructor(path: string, problem: string) {
    super(`${path}: ${problem}`);
    this.name = "SafetensorsError";
  }
}

/** One tensor's entry in the header. */
export interface TensorInfo {
  /** Element type. */
  dtype: SafetensorsDType;
  /** Dimensions. */
  shape: number[];
  /** Byte range [begin, end) relative to the start of the data section. */
  offsets: [number, number];
}

/** A validated header. */
export interface SafetensorsHeader {
  /** Tensors by name. */
  tensors: Map<string, TensorInfo>;
  /** The `__metadata__` strings. */
  metadata: Record<string, string>;
  /** Byte offset of the data section in the file. */
  dataStart: number;
}

/** A tensor to write. */
export interface TensorToWrite {
  /** Name in the header. */
  name: string;
  /** Element type. */
  dtype: SafetensorsDType;
  /** Dimensions. */
  shape: number[];
  /** Little-endian bytes (typed arrays are viewed as bytes). */
  data: ArrayBufferView;
}

/**
 * Writes a safetensors file atomically: `path.tmp` is written, synced and renamed
 * over `path`, and the folder is synced so the rename survives a power cut.
 *
 * @param path Destination.
 * @param tensors Tensors in the order their bytes are laid out.
 * @param metadata String metadata for `__metadata__`.
 * @example
 * ```ts
 * await writeSafetensors("w.safetensors", [{ name: "w", dtype: "F32", shape: [2], data: new Float32Array([1, 2]) }], {});
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string>,
): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let cursor = 0;
  for (const t of tensors) {
    const expected = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (t.data.byteLength !== expected) {
      throw new Error(
        `Tensor "${t.name}" has ${t.data.byteLength} bytes, its shape and dtype need ${expected}`,
      );
    }
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [cursor, cursor + expected] };
    cursor += expected;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8); // align data to 8 bytes
  const headerBytes = new TextEncoder().encode(json);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(headerBytes.length), true);

  const temporary = `${path}.tmp`;
  const file = await Deno.open(temporary, { write: true, create: true, truncate: true });
  try {
    await writeAll(file, prefix);
    await writeAll(file, headerBytes);
    for (const t of tensors) {
      await writeAll(file, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
    await file.sync();
  } catch (error) {
    file.close();
    await Deno.remove(temporary).catch(() => {});
    throw error;
  }
  file.close();
  await Deno.rename(temporary, path);
  await syncFolder(path);
}

/** Makes the rename itself durable (a power cut after it must not bring the old file back). */
async function syncFolder(path: string): Promise<void> {
  const folder = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
  try {
    const handle = await Deno.open(folder, { read: true });
    try {
      await handle.sync();
    } finally {
      handle.close();
    }
  } catch {
    // Some platforms (Windows) cannot open or sync a folder; the data itself is already synced.
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await file.write(bytes.subarray(written));
}

/**
 * Opens a safetensors file for reading; a missing file is one line saying what to do.
 *
 * @param path The file.
 * @param whenMissing What to tell the user when it does not exist, e.g. "train a model first".
 * @returns The open file (close it when done).
 * @throws {SafetensorsError} When the file does not exist.
 * @example
 * ```ts
 * const file = await openSafetensors("out/ckpt.safetensors", "train a model first");
 * const header = await readSafetensorsHeader(file, "out/ckpt.safetensors");
 * file.close();
 * ```
 */
export async function openSafetensors(path: string, whenMissing: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) throw new SafetensorsError(path, `not found; ${whenMissing}`);
    throw error;
  }
}

/**
 * Reads and validates a safetensors header: its length is bounded and inside the
 * file; it is a JSON object; each tensor has a known dtype, a shape of
 * non-negative integers, and offsets matching its size, inside the data section
 * and not overlapping another tensor; metadata values are strings.
 *
 * @param file An open file.
 * @param path Its name, for messages.
 * @returns The header.
 * @throws {SafetensorsError} Naming the file and the first problem.
 */
export async function readSafetensorsHeader(file: Deno.FsFile, path: string): Promise<SafetensorsHeader> {
  const size = (await file.stat()).size;
  if (size < 8) throw new SafetensorsError(path, `is ${size} bytes, too short to be a safetensors file`);
  const prefix = await readAt(file, 0, 8, path);
  const length = Number(new DataView(prefix.buffer).getBigUint64(0, true));
  if (length > MAX_HEADER_BYTES) {
    throw new SafetensorsError(
      path,
      `declares a ${length}-byte header, more than the ${MAX_HEADER_BYTES} allowed`,
    );
  }
  if (8 + length > size) {
    throw new SafetensorsError(
      path,
      `declares a ${length}-byte header but the file has ${size} bytes (truncated?)`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(await readAt(file, 8, length, path)));
  } catch {
    throw new SafetensorsError(path, "has a header that is not valid UTF-8 JSON");
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new SafetensorsError(path, "has a header that is not a JSON object");
  }
  const dataStart = 8 + length;
  const dataSize = size - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(raw as Record<string, unknown>)) {
    if (name === "__metadata__") {
      metadata = validateMetadata(entry, path);
      continue;
    }
    tensors.set(name, validateEntry(name, entry, dataSize, path));
  }
  const ranges = [...tensors.entries()].sort((a, b) => a[1].offsets[0] - b[1].offsets[0]);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i][1].offsets[0] < ranges[i - 1][1].offsets[1]) {
      throw new SafetensorsError(path, `tensors "${ranges[i - 1][0]}" and "${ranges[i][0]}" overlap`);
    }
  }
  return { tensors, metadata, dataStart };
}

function validateMetadata(entry: unknown, path: string): Record<string, string> {
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    throw new SafetensorsError(path, "has a __metadata__ that is not an object");
  }
  for (const [key, value] of Object.entries(entry)) {
    if (typeof value !== "string") {
      throw new SafetensorsError(path, `has metadata "${key}" that is not a string`);
    }
  }
  return entry as Record<string, string>;
}

function validateEntry(name: string, entry: unknown, dataSize: number, path: string): TensorInfo {
  const bad = (problem: string) => new SafetensorsError(path, `tensor "${name}" ${problem}`);
  if (typeof entry !== "object" || entry === null) throw bad("has no {dtype, shape, data_offsets} entry");
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== "string" || !(dtype in DTYPE_BYTES)) {
    throw bad(`has dtype ${JSON.stringify(dtype)}; supported: ${Object.keys(DTYPE_BYTES).join(", ")}`);
  }
  if (!Array.isArray(shape) || shape.some((d) => !Number.isSafeInteger(d) || d < 0) || shape.length > 8) {
    throw bad(`has an invalid shape ${JSON.stringify(shape)}`);
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    offsets.some((o) => !Number.isSafeInteger(o) || o < 0) || offsets[1] < offsets[0]
  ) {
    throw bad(`has invalid data_offsets ${JSON.stringify(offsets)}`);
  }
  const bytes = (shape as number[]).reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype as SafetensorsDType];
  if (offsets[1] - offsets[0] !== bytes) {
    throw bad(`spans ${offsets[1] - offsets[0]} bytes but its shape and dtype need ${bytes}`);
  }
  if (offsets[1] > dataSize) {
    throw bad(`ends at byte ${offsets[1]}, beyond the ${dataSize}-byte data section`);
  }
  return { dtype: dtype as SafetensorsDType, shape: shape as number[], offsets: offsets as [number, number] };
}

/**
 * Reads one tensor's raw bytes.
 *
 * @param file The open file.
 * @param header Its validated header.
 * @param name The tensor.
 * @param path The file's name, for messages.
 * @returns The bytes (little-endian).
 */
export async function readTensorBytes(
  file: Deno.FsFile,
  header: SafetensorsHeader,
  name: string,
  path: string,
): Promise<Uint8Array> {
  const info = header.tensors.get(name);
  if (!info) throw new SafetensorsError(path, `has no tensor "${name}"`);
  return await readAt(file, header.dataStart + info.offsets[0], info.offsets[1] - info.offsets[0], path);
}

/**
 * Converts stored F32, F16 or BF16 bytes to f32 values.
 *
 * @param bytes The tensor's bytes.
 * @param dtype Its dtype.
 * @returns The values.
 */
export function toFloat32(bytes: Uint8Array, dtype: SafetensorsDType): Float32Array {
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  switch (dtype) {
    case "F32":
      return new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4).slice();
    case "F16":
      return Float32Array.from(new Float16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2));
    case "BF16": {
      const halves = new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 2);
      const words = new Uint32Array(halves.length);
      for (let i = 0; i < halves.length; i++) words[i] = halves[i] << 16;
      return new Float32Array(words.buffer);
    }
    default:
      throw new Error(`Cannot convert ${dtype} to float32`);
  }
}

async function readAt(
  file: Deno.FsFile,
  position: number,
  length: number,
  path: string,
): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  await file.seek(position, Deno.SeekMode.Start);
  let filled = 0;
  while (filled < length) {
    const n = await file.read(out.subarray(filled));
    if (n === null) {
      throw new SafetensorsError(path, `ends early: wanted ${length} bytes at offset ${position}`);
    }
    filled += n;
  }
  return out;
}
