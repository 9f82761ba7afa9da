import assert from "node:assert/strict";
import { join } from "node:path";
import { loadCheckpoint } from "../model/checkpoint.ts";
import { prepareDataset } from "../model/prepare.ts";
import { runTask } from "./cli.ts";
import { testGpu } from "./harness.ts";

const DIR = "tests/tmp/hf_cli";
const TINY = [
  "--n_layer=1",
  "--n_head=2",
  "--n_embd=32",
  "--block_size=16",
  "--batch_size=4",
  "--eval_iters=1",
  "--log_interval=1",
  "--peak_flops=1e12",
];

Deno.test("train draws loss.svg at each evaluation; export and train --init_from hf: carry the weights over exactly", async () => {
  await Deno.remove(DIR, { recursive: true }).catch(() => {});
  await Deno.mkdir(DIR, { recursive: true });
  const text = await Deno.readTextFile("data/shakespeare_char/input.txt");
  await Deno.writeTextFile(join(DIR, "input.txt"), text.slice(0, 20_000));
  const data = join(DIR, "data");
  await prepareDataset({ input: join(DIR, "input.txt"), out: data, force: true });

  const first = join(DIR, "first");
  const trained = await runTask("train", [
    ...TINY,
    `--dataset=${data}`,
    `--out_dir=${first}`,
    "--max_iters=4",
    "--eval_interval=2",
  ]);
  assert.equal(trained.code, 0, trained.stderr);
  // On a software adapter the run says, before its first evaluation, that it compiles kernels.
  const note = trained.stdout.indexOf("compiling the kernels as they are first used");
  assert.equal(note >= 0, (await testGpu()).info.fallback, trained.stdout);
  if (note >= 0) assert.ok(note < trained.stdout.indexOf("step 0:"), trained.stdout);
  const svg = await Deno.readTextFile(join(first, "loss.svg"));
  const val = svg.match(/data-name="val"[^>]* points="([^"]*)"/);
  assert.ok(val, "a val series");
  assert.equal(val[1].split(" ").length, 3, "evaluations at iterations 0, 2 and 4");

  const hf = join(DIR, "hf");
  const exported = await runTask("export", ["--out_dir", first, "--hf", hf]);
  assert.equal(exported.code, 0, exported.stderr);
  for (const file of ["config.json", "model.safetensors", "generation_config.json"]) {
    assert.ok((await Deno.stat(join(hf, file))).isFile, file);
  }

  const second = join(DIR, "second");
  const continued = await runTask("train", [
    ...TINY,
    `--dataset=${data}`,
    `--out_dir=${second}`,
    `--init_from=hf:${hf}`,
    "--max_iters=0",
  ]);
  assert.equal(continued.code, 0, continued.stderr);
  assert.match(continued.stdout, /starting from the weights in tests\/tmp\/hf_cli\/hf/);
  assert.match(continued.stdout, /note: the dataset's char tokenizer could not be checked/);
  const before = await loadCheckpoint(join(first, "ckpt.safetensors"));
  const after = await loadCheckpoint(join(second, "ckpt.safetensors"));
  assert.deepEqual(after.config, before.config);
  assert.deepEqual(after.params, before.params, "weights unchanged through export and import");

  const tooLong = await runTask("train", [
    ...TINY.filter((flag) => !flag.startsWith("--block_size")),
    "--block_size=32",
    `--dataset=${data}`,
    `--out_dir=${join(DIR, "third")}`,
    `--init_from=hf:${hf}`,
  ]);
  assert.equal(tooLong.code, 1);
  assert.match(
    tooLong.stderr,
    /^error: block_size 32 exceeds the max_position_embeddings 16 of .*; lower --block_size\n$/,
  );
});

Deno.test("export refuses a missing --hf or checkpoint in one line", async () => {
  const noTarget = await runTask("export", ["--out_dir", DIR]);
  assert.equal(noTarget.code, 2);
  assert.match(noTarget.stderr, /^error: --hf is required: the folder to write, e\.g\. --hf out\/hf\n$/);
  const noCheckpoint = await runTask("export", [
    "--out_dir",
    join(DIR, "nothing"),
    "--hf",
    join(DIR, "never"),
  ]);
  assert.equal(noCheckpoint.code, 1);
  assert.match(
    noCheckpoint.stderr,
    /^error: tests\/tmp\/hf_cli\/nothing\/ckpt\.safetensors: not found; .*\n$/,
  );
});

Deno.test("finetune --init_from hf:DIR trains an adapter with the folder's tokenizer.json; sample applies it", async () => {
  const dir = join(DIR, "lora");
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });
  const text = await Deno.readTextFile("data/shakespeare/input.txt");
  await Deno.writeTextFile(join(dir, "input.txt"), text.slice(0, 20_000));
  await Deno.writeTextFile(join(dir, "shout.txt"), text.slice(20_000, 30_000).toUpperCase());
  const data = join(dir, "data");
  await prepareDataset({ input: join(dir, "input.txt"), out: data, tokenizer: "gpt2", force: true });
  const base = join(dir, "base");
  const trained = await runTask("train", [
    ...TINY,
    `--dataset=${data}`,
    `--out_dir=${base}`,
    "--max_iters=2",
  ]);
  assert.equal(trained.code, 0, trained.stderr);
  const hf = join(dir, "hf");
  const exported = await runTask("export", ["--out_dir", base, "--hf", hf]);
  assert.equal(exported.code, 0, exported.stderr);
  assert.ok((await Deno.stat(join(hf, "tokenizer.json"))).isFile, "a gpt2 model exports its tokenizer.json");

  const out = join(dir, "adapter");
  const tuned = await runTask("finetune", [
    `--init_from=hf:${hf}`,
    `--dataset=${join(dir, "shout.txt")}`,
    `--out_dir=${out}`,
    "--block_size=8",
    "--batch_size=2",
    "--max_iters=3",
    "--eval_interval=3",
    "--eval_iters=1",
  ]);
  assert.equal(tuned.code, 0, tuned.stderr);
  assert.match(tuned.stdout, /encoded .*shout\.txt with the base's .* tokenizer/);
  assert.match(tuned.stdout, /done: 3 iterations/);
  const adapter = join(out, "adapter_model.safetensors");

  const sampled = await runTask("sample", [
    `--init_from=hf:${hf}`,
    `--lora=${adapter}`,
    "--start=KING",
    "--num_samples=1",
    "--max_new_tokens=5",
  ]);
  assert.equal(sampled.code, 0, sampled.stderr);
  assert.ok(sampled.stdout.startsWith("KING"), sampled.stdout);

  const merge = await runTask("finetune", [
    "--merge",
    `--init_from=hf:${hf}`,
    `--lora=${adapter}`,
    "--out=x",
  ]);
  assert.equal(merge.code, 2);
  assert.match(merge.stderr, /^error: --merge writes a checkpoint of ours and needs one as its base/);
});
