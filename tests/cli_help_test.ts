import assert from "node:assert/strict";
import { parseFlags, tuneKernelsSetting, UsageError } from "../scripts/cli.ts";

Deno.test("--help lines up every flag's description past the longest flag name", () => {
  const printed: string[] = [];
  const log = console.log;
  console.log = (text: string) => printed.push(text);
  try {
    const flags = {
      top_k: { type: "string" as const, help: "Keep the k most likely tokens", default: "200" },
      repetition_penalty_of_a_longer_name: { type: "string" as const, help: "Penalise repeats" },
      greedy: { type: "boolean" as const, help: "Take the likeliest token" },
    };
    assert.equal(parseFlags(["--help"], "deno task sample", flags), null);
  } finally {
    console.log = log;
  }
  const lines = printed.join("\n").split("\n").filter((line) => line.startsWith("  --"));
  assert.equal(lines.length, 4);
  const columns = lines.map((line) => line.search(/ {2}[A-Z]/));
  assert.ok(columns.every((column) => column > 0 && column === columns[0]), lines.join("\n"));
  assert.match(lines[1], /^ {2}--repetition_penalty_of_a_longer_name=VALUE {2}Penalise repeats$/);
});

Deno.test("--tune_kernels takes auto, on or off, and says so in one line otherwise", () => {
  for (const value of ["auto", "on", "off"]) assert.equal(tuneKernelsSetting(value), value);
  assert.throws(() => tuneKernelsSetting("yes"), (error: Error) => {
    assert.ok(error instanceof UsageError);
    assert.equal(error.message, '--tune_kernels must be auto, on or off, got "yes"');
    return true;
  });
});
