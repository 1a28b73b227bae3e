// Package cyservev1 holds the Go stubs of protos/cyserve/v1, generated here by running
// `go generate` in this folder (protoc, protoc-gen-go and protoc-gen-go-grpc on PATH).
// The generated files are not committed: the .proto files are the source of truth.
package cyservev1

//go:generate protoc -I ../../../protos --go_out=.. --go_opt=module=github.com/cyserve/cyserve/clients/go --go-grpc_out=.. --go-grpc_opt=module=github.com/cyserve/cyserve/clients/go cyserve/v1/generation.proto
