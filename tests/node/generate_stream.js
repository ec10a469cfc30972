// A client that knows nothing of our Python stubs: it loads protos/ as other teams
// would (@grpc/proto-loader), streams one GenerateStream call and prints one JSON line.
//
// Usage: node generate_stream.js TARGET REQUEST_JSON [TIMEOUT_S]
//   TARGET        host:port of a plaintext server
//   REQUEST_JSON  a GenerateRequest in proto field names, e.g. {"prompt": "Hi", "max_new_tokens": 4}
// Prints {"text", "finish_reason", "chunks", "request_id", "generated_tokens"} and exits 0,
// or {"code", "details", "has_status_details"} and exits 2 when the call fails.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");

function main(argv) {
  if (argv.length < 2) {
    process.stderr.write("usage: node generate_stream.js TARGET REQUEST_JSON [TIMEOUT_S]\n");
    return process.exit(64);
  }
  const [target, requestJson, timeoutS = "30"] = argv;
  // keepCase: the proto field names (snake_case), as in the .proto and grpcurl.
  // enums: String gives "FINISH_REASON_LENGTH" rather than a bare number.
  const definition = protoLoader.loadSync("zopilot/v1/generation.proto", {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(definition).zopilot.v1;
  const client = new v1.Generation(target, grpc.credentials.createInsecure());
  const deadline = new Date(Date.now() + Number(timeoutS) * 1000);
  const call = client.GenerateStream(JSON.parse(requestJson), { deadline });

  const result = { text: "", finish_reason: "", chunks: 0, request_id: "", generated_tokens: 0 };
  call.on("data", (chunk) => {
    result.text += chunk.text;
    result.chunks += 1;
    result.request_id = chunk.request_id;
    if (chunk.finish_reason !== "FINISH_REASON_UNSPECIFIED") {
      result.finish_reason = chunk.finish_reason;
      result.generated_tokens = chunk.usage ? chunk.usage.generated_tokens : 0;
    }
  });
  // "status" comes once, after the last message or the failure; "error" must be
  // listened to (or Node throws) but says nothing "status" does not.
  call.on("error", () => {});
  call.on("status", (status) => {
    client.close();
    if (status.code === grpc.status.OK) {
      process.stdout.write(JSON.stringify(result) + "\n");
      return;
    }
    const details = status.metadata ? status.metadata.get("grpc-status-details-bin") : [];
    const failure = { code: status.code, details: status.details, has_status_details: details.length > 0 };
    process.stdout.write(JSON.stringify(failure) + "\n");
    process.exitCode = 2;
  });
}

main(process.argv.slice(2));
