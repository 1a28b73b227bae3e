// cyserve-check (C++): makes one kind of call to a cyserve server and prints what happened as one
// JSON line; tests/api/test_go_cpp_clients.py drives it. Modes, as in the Go client:
//   stream   stream a greedy completion of --prompt (--max-tokens tokens)
//   invalid  send top_p = 2, which the server refuses with a BadRequest naming sampling.top_p
//   unary    one Generate call of --prompt
//   cancel   start a long stream, read one message, cancel it
// Options: --addr HOST:PORT --tls-ca PEM [--tls-cert PEM --tls-key PEM] --token T (env CYSERVE_TOKEN)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "cyserve/v1/generation.grpc.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace {

namespace pb = cyserve::v1;

struct Result {
  std::string code = "OK", message, text, finish_reason, request_id, reason;
  std::vector<std::pair<std::string, std::string>> violations;
  std::vector<uint32_t> token_ids;
  double retry_delay_s = 0;
  int messages = 0;
  uint32_t prompt_tokens = 0, completion_tokens = 0;
};

const char* kCodeNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                            "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                            "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                            "UNAUTHENTICATED"};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "cyserve-check: cannot read " << path << "\n";
    std::exit(2);
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string Json(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\u%04x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// A channel with TLS (and a client certificate) when a CA is given, and the bearer token on every call.
std::shared_ptr<grpc::Channel> Connect(std::map<std::string, std::string>& args) {
  if (args["tls-ca"].empty()) {
    if (!args["token"].empty() || !args["tls-cert"].empty()) {
      std::cerr << "cyserve-check: a token or a client certificate needs TLS: give --tls-ca too\n";
      std::exit(2);
    }
    return grpc::CreateChannel(args["addr"], grpc::InsecureChannelCredentials());
  }
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ReadFile(args["tls-ca"]);
  if (!args["tls-cert"].empty()) {
    tls.pem_cert_chain = ReadFile(args["tls-cert"]);
    tls.pem_private_key = ReadFile(args["tls-key"]);
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::SslCredentials(tls);
  if (!args["token"].empty()) {  // sends "authorization: Bearer <token>"
    creds = grpc::CompositeChannelCredentials(creds, grpc::AccessTokenCredentials(args["token"]));
  }
  return grpc::CreateChannel(args["addr"], creds);
}

void Add(Result& out, const pb::GenerateResponse& message) {
  out.messages++;
  out.text += message.text();
  out.token_ids.insert(out.token_ids.end(), message.token_ids().begin(), message.token_ids().end());
  out.request_id = message.request_id();
  if (message.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) {
    out.finish_reason = pb::FinishReason_Name(message.finish_reason());
    out.prompt_tokens = message.usage().prompt_tokens();
    out.completion_tokens = message.usage().completion_tokens();
  }
}

// The status code and message, and the google.rpc details packed in grpc-status-details-bin.
void Describe(const grpc::Status& status, Result& out) {
  out.code = kCodeNames[status.error_code()];
  out.message = status.error_message();
  google::rpc::Status rich;
  if (status.error_details().empty() || !rich.ParseFromString(status.error_details())) return;
  for (const auto& detail : rich.details()) {
    google::rpc::BadRequest bad_request;
    google::rpc::RetryInfo retry;
    google::rpc::ErrorInfo info;
    if (detail.UnpackTo(&bad_request)) {
      for (const auto& v : bad_request.field_violations()) out.violations.emplace_back(v.field(), v.description());
    } else if (detail.UnpackTo(&retry)) {
      out.retry_delay_s = retry.retry_delay().seconds() + retry.retry_delay().nanos() * 1e-9;
    } else if (detail.UnpackTo(&info)) {
      out.reason = info.reason();
    }
  }
}

// Retry after a delay: UNAVAILABLE, or RESOURCE_EXHAUSTED with RetryInfo (without it the message
// was over the size limit, and sending it again cannot help).
bool Retryable(const Result& out) {
  return out.code == "UNAVAILABLE" || (out.code == "RESOURCE_EXHAUSTED" && out.retry_delay_s > 0);
}

void Print(const Result& out) {
  std::ostringstream line;
  line << "{\"code\":" << Json(out.code) << ",\"message\":" << Json(out.message) << ",\"violations\":[";
  for (size_t i = 0; i < out.violations.size(); i++) {
    line << (i ? "," : "") << "[" << Json(out.violations[i].first) << "," << Json(out.violations[i].second) << "]";
  }
  line << "],\"retry_delay_s\":" << out.retry_delay_s << ",\"reason\":" << Json(out.reason)
       << ",\"retryable\":" << (Retryable(out) ? "true" : "false") << ",\"text\":" << Json(out.text)
       << ",\"messages\":" << out.messages << ",\"token_ids\":[";
  for (size_t i = 0; i < out.token_ids.size(); i++) line << (i ? "," : "") << out.token_ids[i];
  line << "],\"finish_reason\":" << Json(out.finish_reason) << ",\"prompt_tokens\":" << out.prompt_tokens
       << ",\"completion_tokens\":" << out.completion_tokens << ",\"request_id\":" << Json(out.request_id) << "}";
  std::cout << line.str() << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  const char* env_token = std::getenv("CYSERVE_TOKEN");
  std::map<std::string, std::string> args = {
      {"mode", "stream"}, {"addr", "127.0.0.1:50051"}, {"prompt", "The capital of France is"},
      {"max-tokens", "8"}, {"timeout", "60"}, {"tls-ca", ""}, {"tls-cert", ""}, {"tls-key", ""},
      {"token", env_token ? env_token : ""}};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag.rfind("--", 0) != 0 || !args.count(flag.substr(2))) {
      std::cerr << "cyserve-check: unknown option " << flag << "\n";
      return 2;
    }
    args[flag.substr(2)] = argv[i + 1];
  }
  auto stub = pb::Generation::NewStub(Connect(args));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(std::stoi(args["timeout"])));

  pb::GenerateRequest request;
  request.set_prompt(args["prompt"]);
  request.mutable_sampling()->set_temperature(0);
  request.mutable_stopping()->set_max_tokens(std::stoul(args["max-tokens"]));
  Result out;
  grpc::Status status;
  const std::string& mode = args["mode"];
  if (mode == "stream" || mode == "cancel") {
    if (mode == "cancel") {
      request.mutable_stopping()->set_max_tokens(10000);
      request.mutable_stopping()->set_ignore_eos(true);
    }
    auto reader = stub->GenerateStream(&context, request);
    pb::GenerateResponse message;
    while (reader->Read(&message)) {
      Add(out, message);
      if (mode == "cancel" && out.messages == 1) context.TryCancel();
    }
    status = reader->Finish();
  } else if (mode == "invalid" || mode == "unary") {
    if (mode == "invalid") request.mutable_sampling()->set_top_p(2);
    pb::GenerateResponse reply;
    status = stub->Generate(&context, request, &reply);
    if (status.ok()) Add(out, reply);
  } else {
    std::cerr << "cyserve-check: unknown --mode " << mode << "\n";
    return 2;
  }
  Describe(status, out);
  Print(out);
  return 0;
}
