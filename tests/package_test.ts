import assert from "node:assert/strict";
import { docGaps } from "./doc_gaps.ts";
import { runDeno } from "./cli.ts";

const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
const entryPoints: string[] = Object.values(config.exports as Record<string, string>);

Deno.test("every entry point passes deno doc --lint on its own", async () => {
  for (const entry of entryPoints) {
    const { code, stdout, stderr } = await runDeno(["doc", "--lint", entry]);
    assert.equal(code, 0, `deno doc --lint ${entry}:\n${stdout}${stderr}`);
  }
});

Deno.test("every export has a description, @param and @returns where they apply, and an @example", () => {
  for (const entry of entryPoints) {
    const gaps = docGaps(entry);
    assert.deepEqual(gaps, [], `${entry} has ${gaps.length} documentation gaps:\n${gaps.join("\n")}`);
  }
});

Deno.test("the entry points' own examples type-check", async () => {
  const { code, stderr } = await runDeno(["check", "--doc", ...entryPoints]);
  assert.equal(code, 0, stderr);
});

Deno.test("deno publish --dry-run passes and ships the library only", async () => {
  const { code, stdout, stderr } = await runDeno(["publish", "--dry-run", "--allow-dirty"]);
  const output = stdout + stderr;
  assert.equal(code, 0, output);
  assert.match(output, /mod\.ts/);
  assert.match(output, /kernels\/matmul\.ts/);
  assert.doesNotMatch(
    output,
    /scripts\/|tests\/|examples\/|\.bin|input\.txt/,
    "only the library is published",
  );
});

Deno.test("the examples train a tiny model and sample from it, importing only the package", async () => {
  for (const file of ["examples/train_tiny.ts", "examples/sample.ts"]) {
    const source = await Deno.readTextFile(new URL(`../${file}`, import.meta.url));
    const imports = [...source.matchAll(/from "([^"]+)"/g)].map((match) => match[1]);
    assert.deepEqual(imports.filter((spec) => !spec.startsWith("@webgpu-llm/core")), [], file);
  }
  const out = "tests/tmp/example-tiny";
  await Deno.remove(out, { recursive: true }).catch(() => {});
  const env = { NO_COLOR: "1" };
  const train = await runDeno(
    ["run", "--allow-read=.", "--allow-write=tests/tmp", "--allow-env", "examples/train_tiny.ts", out, "30"],
    env,
  );
  assert.equal(train.code, 0, train.stderr);
  const vals = [...train.stdout.matchAll(/val (\d+\.\d+)/g)].map((match) => Number(match[1]));
  assert.ok(vals.length >= 2 && vals.at(-1)! < vals[0], `val loss should fall: ${train.stdout}`);
  assert.match(train.stdout, new RegExp(`saved ${out}/ckpt.safetensors`));

  const sample = await runDeno(
    ["run", "--allow-read=.", "--allow-env", "examples/sample.ts", `${out}/ckpt.safetensors`, "KING:", "40"],
    env,
  );
  assert.equal(sample.code, 0, sample.stderr);
  assert.ok(sample.stdout.startsWith("KING:"), sample.stdout);
  assert.ok(sample.stdout.trimEnd().length > "KING:".length + 20, `40 characters follow: ${sample.stdout}`);
  await Deno.remove(out, { recursive: true });
});
