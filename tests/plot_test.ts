import assert from "node:assert/strict";
import { join } from "node:path";
import { lossCharts, readRunMetrics, writeLossPlot } from "../model/loss_plot.ts";
import { niceTicks } from "../model/svg_chart.ts";
import { runTask } from "./cli.ts";

const DIR = "tests/tmp/plot";

/** A run's metrics.jsonl: loss falling from 4 to ~2, evaluations every 10 iterations, lr warming up then decaying. */
async function writeRun(name: string, steps: number, tokensPerStep: number, extra = ""): Promise<string> {
  const dir = join(DIR, name);
  await Deno.mkdir(dir, { recursive: true });
  const lines: string[] = [];
  for (let iter = 0; iter <= steps; iter++) {
    const lr = iter < 5 ? 1e-3 * (iter + 1) / 6 : 1e-3 * (1 - iter / (2 * steps));
    if (iter % 10 === 0) {
      const loss = 2 + 2 * Math.exp(-iter / 10);
      lines.push(JSON.stringify({
        type: "eval",
        iter,
        train_loss: loss,
        val_loss: loss + 0.1,
        lr,
        tokens: iter * tokensPerStep,
      }));
    }
    if (iter < steps) {
      lines.push(JSON.stringify({
        type: "train",
        iter,
        loss: 2 + 2 * Math.exp(-iter / 10) + 0.05 * Math.sin(iter),
        lr,
        grad_norm: 1,
        tokens: (iter + 1) * tokensPerStep,
      }));
    }
  }
  await Deno.writeTextFile(join(dir, "metrics.jsonl"), lines.join("\n") + "\n" + extra);
  return dir;
}

/**
 * Checks that `text` is well-formed XML: one root, tags nested and closed in order,
 * attributes quoted, `&` only in entities. Returns the element names in document order.
 */
function wellFormedElements(text: string): string[] {
  const body = text.replace(/^<\?xml[^?]*\?>\s*/, "");
  const names: string[] = [];
  const open: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/y;
  let at = 0;
  let roots = 0;
  while (at < body.length) {
    const next = body.indexOf("<", at);
    const textPart = body.slice(at, next < 0 ? body.length : next);
    assert.doesNotMatch(textPart, /&(?!(amp|lt|gt|quot|apos);)/, "a bare & in text");
    if (next < 0) break;
    if (open.length === 0) assert.equal(textPart.trim(), "", "text outside the root element");
    tag.lastIndex = next;
    const match = tag.exec(body);
    assert.ok(match, `malformed tag at ${body.slice(next, next + 60)}`);
    const [, closing, name, , selfClosing] = match;
    if (closing) assert.equal(open.pop(), name, `</${name}> closes another element`);
    else {
      if (open.length === 0) roots++;
      names.push(name);
      if (!selfClosing) open.push(name);
    }
    at = tag.lastIndex;
  }
  assert.deepEqual(open, [], "unclosed elements");
  assert.equal(roots, 1, "one root element");
  return names;
}

/** Every polyline of a series (one per panel it appears in), by its data-name, as [x, y] pixel pairs. */
function polylines(svg: string, name: string): [number, number][][] {
  const pattern = new RegExp(`<polyline class="series" data-name="${name}"[^>]* points="([^"]*)"`, "g");
  const lines = [...svg.matchAll(pattern)].map((match) =>
    match[1].split(" ").map((pair) => pair.split(",").map(Number) as [number, number])
  );
  assert.ok(lines.length > 0, `no series "${name}"`);
  return lines;
}

Deno.test("metrics.jsonl is read by iteration: a resumed run's repeat wins, a torn last line is skipped", async () => {
  const dir = await writeRun(
    "resumed",
    20,
    100,
    JSON.stringify({ type: "eval", iter: 10, train_loss: 9, val_loss: 9.5, lr: 0, tokens: 1000 }) +
      '\n{"type": "tr',
  );
  const run = await readRunMetrics(dir);
  assert.equal(run.train.length, 20);
  assert.deepEqual(run.eval.map((e) => e.iter), [0, 10, 20]);
  assert.equal(run.eval[1].valLoss, 9.5, "the later record of iteration 10");
  await Deno.writeTextFile(join(dir, "metrics.jsonl"), '{"type":"train"}\n{"type":"eval","iter":0}\n');
  await assert.rejects(readRunMetrics(dir), /line 1 lacks a numeric "iter"/);
  await Deno.writeTextFile(
    join(dir, "metrics.jsonl"),
    'oops\n{"type":"train","iter":0,"loss":1,"lr":1,"tokens":1}\n',
  );
  await assert.rejects(readRunMetrics(dir), /line 1 is not JSON/);
  await assert.rejects(
    readRunMetrics(join(DIR, "nowhere")),
    /metrics\.jsonl" not found; deno task train writes it/,
  );
});

Deno.test("the plot is well-formed SVG with loss by iteration and by tokens, the lr schedule, axes and a legend", async () => {
  const a = await writeRun("run-a", 40, 1000);
  const b = await writeRun("run-b", 30, 4000);
  const path = join(DIR, "two.svg");
  await writeLossPlot([a, b], path);
  const svg = await Deno.readTextFile(path);
  const elements = wellFormedElements(svg);
  assert.equal(elements[0], "svg");
  assert.match(svg, /<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" width="\d+" height="\d+"/);
  for (const title of ["Loss by iteration", "Loss by tokens seen", "Learning-rate schedule"]) {
    assert.match(svg, new RegExp(`>${title}</text>`));
  }
  for (const label of ["iteration", "tokens", "loss \\(nats/token\\)", "learning rate"]) {
    assert.match(svg, new RegExp(`>${label}</text>`), `axis label ${label}`);
  }
  for (const [run, steps, evals] of [["run-a", 40, 5], ["run-b", 30, 4]] as const) {
    const logged = polylines(svg, `${run}: train \\(logged\\)`);
    const val = polylines(svg, `${run}: val`);
    assert.deepEqual(logged.map((l) => l.length), [steps, steps], "logged loss in both loss panels");
    assert.deepEqual(polylines(svg, `${run}: train \\(eval\\)`).map((l) => l.length), [evals, evals]);
    assert.deepEqual(val.map((l) => l.length), [evals, evals]);
    // Iterations run left to right; the falling loss runs down the panel (SVG y grows downwards).
    for (let i = 1; i < evals; i++) {
      assert.ok(val[0][i][0] > val[0][i - 1][0], "x increases with iteration");
      assert.ok(val[0][i][1] > val[0][i - 1][1], "y moves down as the loss falls");
    }
    assert.match(svg, new RegExp(`<text [^>]*>${run}: val</text>`), "legend entry");
    const lr = polylines(svg, run);
    assert.equal(lr.length, 1);
    assert.equal(lr[0].length, steps + 1, "one lr point per iteration logged or evaluated");
  }
  // Both runs share the loss-by-tokens axis: run-b saw 4x the tokens per step, so it ends further right.
  assert.ok(polylines(svg, "run-b: val")[1].at(-1)![0] > polylines(svg, "run-a: val")[1].at(-1)![0]);
});

Deno.test("runs are named by folder in the legend, by path when their folders share a name", () => {
  const run = (name: string) => ({ name, train: [{ iter: 0, loss: 3, lr: 1e-3, tokens: 8 }], eval: [] });
  const names = (dirs: string[]) => lossCharts(dirs.map(run))[2].series.map((s) => s.name);
  assert.deepEqual(names(["runs/small", "runs/big"]), ["small", "big"]);
  assert.deepEqual(names(["a/out", "b/out"]), ["a/out", "b/out"]);
  assert.deepEqual(names(["runs/out"]), ["learning rate"], "one run: no run names");
});

Deno.test("axis ticks are round numbers covering the range", () => {
  assert.deepEqual(niceTicks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(1.93, 4.1), [2, 2.5, 3, 3.5, 4]);
  assert.deepEqual(niceTicks(0, 40000), [0, 10000, 20000, 30000, 40000]);
});

Deno.test("deno task plot draws several runs; a missing run is one line of error", async () => {
  const a = await writeRun("cli-a", 20, 10);
  const b = await writeRun("cli-b", 20, 10);
  const out = join(DIR, "cli.svg");
  await Deno.remove(out).catch(() => {});
  const ok = await runTask("plot", ["--out_dir", a, b, "--svg", out]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /wrote tests\/tmp\/plot\/cli\.svg/);
  wellFormedElements(await Deno.readTextFile(out));
  const single = await runTask("plot", ["--out_dir", a]);
  assert.equal(single.code, 0, single.stderr);
  assert.ok((await Deno.stat(join(a, "loss.svg"))).isFile, "one run: DIR/loss.svg");
  const missing = await runTask("plot", ["--out_dir", join(DIR, "missing")]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^error: "tests\/tmp\/plot\/missing\/metrics\.jsonl" not found; .*\n$/);
});
