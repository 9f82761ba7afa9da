/**
 * SIGKILL during checkpoint saves: a real training process, saving after every
 * iteration, is killed at moments spread over its saves (from the instant the
 * temporary file appears to after the rename). Whatever is on disk must load,
 * and the next run must resume from it and never lose progress.
 */
import assert from "node:assert/strict";
import { loadCheckpoint } from "../model/checkpoint.ts";
import { spawnTrain } from "./cli.ts";

const OUT = "tests/tmp/sigkill";
const CKPT = `${OUT}/ckpt.safetensors`;
const KILLS = 8;

function train(resume: boolean): Deno.ChildProcess {
  return spawnTrain([
    // ~0.4 M parameters: a 5 MB checkpoint takes a few milliseconds to write, long enough to land in.
    ...["--n_layer=2", "--n_head=4", "--n_embd=128", "--block_size=16", "--batch_size=2", "--eval_iters=1"],
    ...["--max_iters=100000", "--eval_interval=1", "--log_interval=1000", "--always_save_checkpoint=true"],
    `--out_dir=${OUT}`,
    `--init_from=${resume ? "resume" : "scratch"}`,
  ], "null");
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** The iteration of the checkpoint on disk, or -1 before the first save. */
async function savedIteration(): Promise<number> {
  if (!await exists(CKPT)) return -1;
  return (await loadCheckpoint(CKPT)).training!.iteration;
}

Deno.test("a training process killed during checkpoint saves always leaves a checkpoint that loads and resumes", async () => {
  await Deno.remove(OUT, { recursive: true }).catch(() => {});
  let lastIteration = -1;
  let firstIteration = -1;
  let midSave = 0;
  for (let kill = 0; kill < KILLS; kill++) {
    await Deno.remove(`${CKPT}.tmp`).catch(() => {}); // the killed save's leftover, so we see the next one begin
    const child = train(kill > 0);
    const waitFor = async (what: string, done: () => Promise<boolean>, pollMs = 0) => {
      const deadline = Date.now() + 60_000;
      while (!await done()) {
        if (Date.now() > deadline) {
          child.kill("SIGKILL");
          throw new Error(`${what}: ${await new Response(child.stderr).text()}`);
        }
        await new Promise((resolve) => setTimeout(resolve, pollMs));
      }
    };
    // Let the run save past the last run's iteration (so every run adds progress, however slowly it starts),
    // then wait 0-600 ms and for the next save to begin (the temporary file appears), and kill after 0-7 ms:
    // before, during or just after the write, sync and rename.
    await waitFor("no save past the last run's", async () => await savedIteration() > lastIteration, 20);
    await new Promise((resolve) => setTimeout(resolve, 200 * (kill % 4)));
    await waitFor("no save started", () => exists(`${CKPT}.tmp`));
    await new Promise((resolve) => setTimeout(resolve, kill % 8));
    child.kill("SIGKILL");
    const status = await child.status;
    await child.stderr.cancel();
    assert.equal(status.signal, "SIGKILL");
    if (await exists(`${CKPT}.tmp`)) midSave++;

    const checkpoint = await loadCheckpoint(CKPT); // throws if the kill left it unreadable
    const iteration = checkpoint.training!.iteration;
    assert.ok(iteration >= lastIteration, `progress went back from ${lastIteration} to ${iteration}`);
    assert.ok(kill === 0 || iteration > 0, "a resumed run continues from the saved iteration");
    lastIteration = iteration;
    if (kill === 0) firstIteration = iteration;
  }
  assert.ok(midSave > 0, "at least one kill landed while a save was being written");
  assert.ok(
    lastIteration > firstIteration,
    `the resumed runs added progress (${firstIteration} to ${lastIteration})`,
  );
  await Deno.remove(OUT, { recursive: true });
});
