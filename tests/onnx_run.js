// Runs an exported moelab model in ONNX Runtime (onnxruntime-node), for tests/export_tests.cpp.
//   node onnx_run.js logits MODEL TOKENS.json OUT.json   tokens {shape: [B, S], data} -> logits {shape, data}
//   node onnx_run.js greedy MODEL PROMPT.json OUT.json   {prompt: [ids], tokens: n, window: seq_len}
//       -> {ids}: greedy continuation (id 0, the unknown mark, never chosen), as moelab generate
//       does at temperature 0 without stopping at end of text
const ort = require('onnxruntime-node');
const fs = require('fs');

async function main() {
  const [mode, model, input, out] = process.argv.slice(2);
  const request = JSON.parse(fs.readFileSync(input, 'utf8'));
  const session = await ort.InferenceSession.create(model);
  const run = async (ids, shape) => {
    const feeds = {tokens: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), shape)};
    return (await session.run(feeds)).logits;
  };
  if (mode === 'logits') {
    const logits = await run(request.data, request.shape);
    fs.writeFileSync(out, JSON.stringify({shape: logits.dims, data: Array.from(logits.data)}));
    return;
  }
  const context = request.prompt.slice();
  const generated = [];
  for (let i = 0; i < request.tokens; ++i) {
    const window = context.slice(Math.max(0, context.length - request.window));
    const logits = await run(window, [1, window.length]);
    const vocab = logits.dims[2], last = (window.length - 1) * vocab;
    let best = 1;
    for (let v = 2; v < vocab; ++v) if (logits.data[last + v] > logits.data[last + best]) best = v;
    generated.push(best);
    context.push(best);
  }
  fs.writeFileSync(out, JSON.stringify({ids: generated}));
}

main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
