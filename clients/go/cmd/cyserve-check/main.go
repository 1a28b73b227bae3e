// Command cyserve-check makes one kind of call to a cyserve server and prints what happened as
// one JSON line; tests/api/test_go_cpp_clients.py drives it (docs/clients.md quotes it). Modes:
//
//	stream   stream a greedy completion of -prompt (-max-tokens tokens)
//	invalid  send top_p = 2, which the server refuses with a BadRequest naming sampling.top_p
//	unary    one Generate call of -prompt
//	cancel   start a long stream, read one message, cancel it
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	cyserve "github.com/cyserve/cyserve/clients/go"
	pb "github.com/cyserve/cyserve/clients/go/cyservev1"
	"google.golang.org/protobuf/proto"
)

type result struct {
	Code           string      `json:"code"`
	Message        string      `json:"message,omitempty"`
	Violations     [][2]string `json:"violations,omitempty"`
	RetryDelayS    float64     `json:"retry_delay_s,omitempty"`
	Reason         string      `json:"reason,omitempty"`
	Retryable      bool        `json:"retryable"`
	Text           string      `json:"text"`
	Messages       int         `json:"messages"`
	TokenIDs       []uint32    `json:"token_ids"`
	FinishReason   string      `json:"finish_reason,omitempty"`
	PromptTokens   uint32      `json:"prompt_tokens"`
	CompletionToks uint32      `json:"completion_tokens"`
	RequestID      string      `json:"request_id,omitempty"`
}

func main() {
	mode := flag.String("mode", "stream", "stream | invalid | unary | cancel")
	addr := flag.String("addr", "127.0.0.1:50051", "server address")
	prompt := flag.String("prompt", "The capital of France is", "prompt text")
	maxTokens := flag.Uint("max-tokens", 8, "most tokens to generate")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline of the call")
	var opts cyserve.Options
	flag.StringVar(&opts.CAFile, "tls-ca", "", "CA of the server's certificate (PEM): use TLS")
	flag.StringVar(&opts.CertFile, "tls-cert", "", "client certificate (PEM), for mutual TLS")
	flag.StringVar(&opts.KeyFile, "tls-key", "", "client key (PEM)")
	flag.StringVar(&opts.Token, "token", os.Getenv("CYSERVE_TOKEN"), "bearer token (env CYSERVE_TOKEN)")
	flag.Parse()

	conn, err := cyserve.Dial(*addr, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cyserve-check:", err)
		os.Exit(2)
	}
	defer conn.Close()
	client := pb.NewGenerationClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	request := &pb.GenerateRequest{
		Prompt:   *prompt,
		Sampling: &pb.SamplingParams{Temperature: proto.Float32(0)},
		Stopping: &pb.StoppingCriteria{MaxTokens: proto.Uint32(uint32(*maxTokens))},
	}
	var out result
	switch *mode {
	case "stream":
		err = stream(ctx, client, request, &out, false)
	case "cancel":
		request.Stopping.MaxTokens = proto.Uint32(10000)
		request.Stopping.IgnoreEos = true
		err = stream(ctx, client, request, &out, true)
	case "invalid":
		request.Sampling.TopP = proto.Float32(2)
		_, err = client.Generate(ctx, request)
	case "unary":
		var reply *pb.GenerateResponse
		if reply, err = client.Generate(ctx, request); err == nil {
			add(&out, reply)
		}
	default:
		fmt.Fprintf(os.Stderr, "cyserve-check: unknown -mode %q\n", *mode)
		os.Exit(2)
	}
	describe(err, &out)
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}

// stream reads the whole stream, or (cancelFirst) cancels the call after its first message and
// returns the error the next read gets.
func stream(ctx context.Context, client pb.GenerationClient, request *pb.GenerateRequest, out *result,
	cancelFirst bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	call, err := client.GenerateStream(ctx, request)
	if err != nil {
		return err
	}
	for {
		message, err := call.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		add(out, message)
		if cancelFirst && out.Messages == 1 {
			cancel()
		}
	}
}

func add(out *result, message *pb.GenerateResponse) {
	out.Messages++
	out.Text += message.GetText()
	out.TokenIDs = append(out.TokenIDs, message.GetTokenIds()...)
	out.RequestID = message.GetRequestId()
	if message.GetFinishReason() != pb.FinishReason_FINISH_REASON_UNSPECIFIED {
		out.FinishReason = message.GetFinishReason().String()
		out.PromptTokens = message.GetUsage().GetPromptTokens()
		out.CompletionToks = message.GetUsage().GetCompletionTokens()
	}
}

func describe(err error, out *result) {
	d := cyserve.DetailsOf(err)
	out.Code = strings.ToUpper(codeName(d.Code.String()))
	out.Message = d.Message
	for _, v := range d.Violations {
		out.Violations = append(out.Violations, [2]string{v.GetField(), v.GetDescription()})
	}
	out.RetryDelayS = d.RetryDelay.Seconds()
	out.Reason = d.Reason
	out.Retryable = cyserve.Retryable(d)
}

// codeName turns Go's "InvalidArgument" into the canonical "INVALID_ARGUMENT".
func codeName(camel string) string {
	if camel == "Canceled" {
		return "CANCELLED"
	}
	var b strings.Builder
	previous := 'A'
	for _, r := range camel {
		if r >= 'A' && r <= 'Z' && (previous < 'A' || previous > 'Z') {
			b.WriteByte('_')
		}
		b.WriteRune(r)
		previous = r
	}
	return strings.TrimPrefix(b.String(), "_")
}
