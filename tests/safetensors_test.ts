import assert from "node:assert/strict";
import {
  MAX_HEADER_BYTES,
  readSafetensorsHeader,
  readTensorBytes,
  toFloat32,
  writeSafetensors,
} from "../model/safetensors.ts";

const DIR = "tests/tmp/safetensors";

async function header(bytes: Uint8Array) {
  await Deno.mkdir(DIR, { recursive: true });
  const path = `${DIR}/crafted.safetensors`;
  await Deno.writeFile(path, bytes);
  const file = await Deno.open(path);
  try {
    return await readSafetensorsHeader(file, path);
  } finally {
    file.close();
  }
}

function craft(json: string, data = new Uint8Array(0), declared?: number): Uint8Array {
  const text = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + text.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(declared ?? text.length), true);
  out.set(text, 8);
  out.set(data, 8 + text.length);
  return out;
}

Deno.test("safetensors round-trips tensors and metadata, data aligned to 8 bytes", async () => {
  await Deno.mkdir(DIR, { recursive: true });
  const path = `${DIR}/round.safetensors`;
  const a = new Float32Array([1.5, -2, 3]);
  const b = new Uint16Array([1, 2, 3, 4, 5]);
  await writeSafetensors(path, [
    { name: "a", dtype: "F32", shape: [3], data: a },
    { name: "b", dtype: "U16", shape: [5], data: b },
  ], { config: '{"n_layer":1}' });
  const file = await Deno.open(path);
  const h = await readSafetensorsHeader(file, path);
  assert.equal(h.dataStart % 8, 0);
  assert.equal(h.metadata.config, '{"n_layer":1}');
  assert.deepEqual(toFloat32(await readTensorBytes(file, h, "a", path), "F32"), a);
  const bBytes = await readTensorBytes(file, h, "b", path);
  assert.deepEqual(new Uint16Array(bBytes.buffer, bBytes.byteOffset, 5), b);
  file.close();
  await assert.rejects(Deno.stat(`${path}.tmp`), Deno.errors.NotFound);
  await Deno.remove(DIR, { recursive: true });
});

Deno.test("f16 and bf16 tensors convert to f32", () => {
  const f16 = new Float16Array([1.5, -0.25]);
  assert.deepEqual([...toFloat32(new Uint8Array(f16.buffer), "F16")], [1.5, -0.25]);
  const bf16 = new Uint16Array([0x3fc0, 0xc080]); // 1.5, -4
  assert.deepEqual([...toFloat32(new Uint8Array(bf16.buffer), "BF16")], [1.5, -4]);
});

Deno.test("crafted headers are refused with the file and the problem named, before any big allocation", async () => {
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(3), /too short/],
    [craft("{}", new Uint8Array(0), MAX_HEADER_BYTES + 1), /more than the \d+ allowed/],
    [craft("{}", new Uint8Array(0), 1000), /truncated/],
    [craft("[1,2]"), /not a JSON object/],
    [craft("{not json"), /not valid UTF-8 JSON/],
    [craft('{"w":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}', new Uint8Array(4)), /dtype "F99"/],
    [craft('{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', new Uint8Array(4)), /invalid shape/],
    [craft('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', new Uint8Array(4)), /spans 4 bytes/],
    [
      craft('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', new Uint8Array(4)),
      /beyond the 4-byte data/,
    ],
    [
      craft(
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
        new Uint8Array(8),
      ),
      /overlap/,
    ],
    [craft('{"__metadata__":{"x":1}}'), /metadata "x" that is not a string/],
  ];
  for (const [bytes, message] of cases) {
    await assert.rejects(header(bytes), (e: unknown) => {
      assert.match((e as Error).message, /^tests\/tmp\/safetensors\/crafted\.safetensors: /);
      assert.match((e as Error).message, message);
      return true;
    });
  }
  await Deno.remove(DIR, { recursive: true });
});
