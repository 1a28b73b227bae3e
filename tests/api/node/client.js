// Streams one generation from a cyserve server with a stub built from protos/ at run time.
// Usage: node client.js <address> <protos dir>. Prints one JSON line: the text, token count,
// finish reason and the index of each message; exits non-zero on any error.
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const path = require("path");

const [address, protoRoot] = process.argv.slice(2);
const definition = protoLoader.loadSync(path.join(protoRoot, "cyserve/v1/generation.proto"), {
  includeDirs: [protoRoot], keepCase: true, longs: String, enums: String, defaults: true,
});
const { Generation } = grpc.loadPackageDefinition(definition).cyserve.v1;
const client = new Generation(address, grpc.credentials.createInsecure());

const request = {
  prompt: "The capital of France is",
  sampling: { temperature: 0 },
  stopping: { max_tokens: 8 },
  output: { logprobs: 2 },
};
const deadline = new Date(Date.now() + 120000);
const call = client.GenerateStream(request, { deadline });
let text = "", tokens = 0, finish = null, logprobs = 0, params = null;
call.on("data", (r) => {
  text += r.text;
  tokens += r.token_ids.length;
  logprobs += r.logprobs.length;
  if (r.params) params = r.params;
  if (r.finish_reason !== "FINISH_REASON_UNSPECIFIED") finish = { reason: r.finish_reason, usage: r.usage };
});
call.on("error", (e) => { console.error(`grpc error ${e.code}: ${e.details}`); process.exit(2); });
call.on("end", () => {
  console.log(JSON.stringify({ text, tokens, logprobs, finish, max_tokens: params && params.stopping.max_tokens }));
  client.close();
});
