import assert from "node:assert/strict";
import { GL_ONLY, NO_ADAPTER, runTask } from "./cli.ts";

Deno.test("doctor prints the adapter, its features and limits, and passes its self-tests", async () => {
  const { code, stdout, stderr } = await runTask("doctor");
  assert.equal(code, 0, stderr);
  for (
    const key of ["adapter", "vendor", "backend", "software", "shader-f16", "timestamp-query", "max binding"]
  ) {
    assert.match(stdout, new RegExp(`^${key} +\\S`, "m"), `doctor shows ${key}`);
  }
  assert.match(stdout, /^self-test f32 +ok/m);
  assert.match(stdout, /^self-test f16 +ok/m);
});

Deno.test("doctor --json reports the same facts as JSON", async () => {
  const { code, stdout, stderr } = await runTask("doctor", ["--json"]);
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stdout);
  assert.equal(typeof report.adapter.name, "string");
  assert.equal(report.features["shader-f16"], "on");
  assert.equal(report.selfTest.f32.ok, true);
  assert.equal(report.selfTest.f16.ok, true);
  assert.ok(report.limits.maxStorageBufferBindingSize > 0);
});

Deno.test("an unknown flag is one line on stderr and exit code 2", async () => {
  const { code, stderr } = await runTask("doctor", ["--bogus"]);
  assert.equal(code, 2);
  assert.equal(stderr.trim(), 'error: Unknown flag "--bogus"; see deno task doctor --help');
});

Deno.test("no adapter at all: one line saying what to install, exit code 1", async () => {
  const { code, stdout, stderr } = await runTask("doctor", [], NO_ADAPTER);
  assert.equal(code, 1);
  assert.equal(stdout, "");
  const lines = stderr.trim().split("\n").filter((line) => !line.startsWith("libEGL"));
  assert.equal(lines.length, 1, stderr);
  assert.match(lines[0], /^error: No WebGPU adapter found; install .*mesa-vulkan-drivers/);
});

Deno.test("an adapter without a required feature: one line naming it, exit code 1", async () => {
  const { code, stderr } = await runTask("doctor", ["--require", "shader-f16"], GL_ONLY);
  assert.equal(code, 1);
  const lines = stderr.trim().split("\n").filter((line) => !line.startsWith("libEGL"));
  assert.equal(lines.length, 1, stderr);
  assert.match(lines[0], /^error: The adapter ".+" lacks the WebGPU feature "shader-f16"/);
});

Deno.test("without f16 the doctor still passes, reporting f16 as absent", async () => {
  const { code, stdout, stderr } = await runTask("doctor", [], GL_ONLY);
  assert.equal(code, 0, stderr);
  assert.match(stdout, /^shader-f16 +absent/m);
  assert.match(stdout, /^self-test f32 +ok/m);
});
