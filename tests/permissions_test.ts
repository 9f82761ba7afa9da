import assert from "node:assert/strict";

const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
const tasks = config.tasks as Record<string, string>;
const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));

/** The `--allow-*` flags of a task's command, by name: `{ read: ".", env: "XDG_RUNTIME_DIR,..." }`. */
function permissions(command: string): Record<string, string | true> {
  const flags: Record<string, string | true> = {};
  for (const [, name, value] of command.matchAll(/--allow-([a-z]+)(?:=(\S+))?/g)) flags[name] = value ?? true;
  return flags;
}

Deno.test("no task runs with blanket permissions, network, subprocesses or native code", () => {
  for (const [name, command] of Object.entries(tasks)) {
    assert.doesNotMatch(command, /(^|\s)-A(\s|$)|--allow-all/, `${name} must not use -A`);
    const granted = permissions(command);
    for (const forbidden of ["net", "ffi", "sys", "import"]) {
      assert.ok(!(forbidden in granted), `${name} must not have --allow-${forbidden}`);
    }
    if (name !== "test") assert.ok(!("run" in granted), `${name} must not start subprocesses`);
    for (const [flag, value] of Object.entries(granted)) {
      if (name === "test" && flag === "env") continue; // the tests set and read GPU variables of their own
      assert.notEqual(value, true, `${name}: --allow-${flag} must name what it allows`);
    }
  }
});

Deno.test("reading a checkpoint never needs more than reading: sample and doctor write nothing", () => {
  for (const name of ["sample", "doctor"]) {
    assert.ok(!("write" in permissions(tasks[name])), `${name} must not write`);
  }
  assert.equal(permissions(tasks.prepare).read, "data", "prepare reads data/ unless asked for more");
});

Deno.test("the README states every task's permissions", () => {
  for (const name of Object.keys(tasks)) {
    assert.match(
      readme,
      new RegExp(`^\\| \`${name}\`\\s*\\|.*\\|.+\\|$`, "m"),
      `README's task table lacks ${name}`,
    );
  }
});
