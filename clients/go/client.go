// Package cyserve dials a cyserve server with the options a caller needs (TLS, mutual TLS, a
// bearer token) and reads the google.rpc details of its errors. The stubs are in cyservev1.
package cyserve

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// Options of a connection. The zero value is a plaintext connection without a token.
type Options struct {
	CAFile   string // PEM roots that signed the server's certificate; set to use TLS
	CertFile string // client certificate (mutual TLS), with KeyFile
	KeyFile  string
	Token    string // sent as "authorization: Bearer <Token>" on every call (TLS only)
}

// Dial opens a connection to target ("host:port").
func Dial(target string, opts Options) (*grpc.ClientConn, error) {
	dial := []grpc.DialOption{}
	if opts.CAFile == "" {
		if opts.CertFile != "" || opts.Token != "" {
			return nil, fmt.Errorf("a client certificate or a token needs TLS: set CAFile too")
		}
		dial = append(dial, grpc.WithInsecure())
		return grpc.Dial(target, dial...)
	}
	config, err := tlsConfig(opts)
	if err != nil {
		return nil, err
	}
	dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	if opts.Token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearerToken(opts.Token)))
	}
	return grpc.Dial(target, dial...)
}

func tlsConfig(opts Options) (*tls.Config, error) {
	pem, err := os.ReadFile(opts.CAFile)
	if err != nil {
		return nil, fmt.Errorf("cannot read the CA file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("the CA file %q holds no PEM certificate", opts.CAFile)
	}
	config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if opts.CertFile != "" || opts.KeyFile != "" {
		pair, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cannot load the client certificate and key: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return config, nil
}

type bearerToken string

func (t bearerToken) GetRequestMetadata(ctx context.Context, uri ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (t bearerToken) RequireTransportSecurity() bool { return true }

// Details are the google.rpc details a cyserve error may carry.
type Details struct {
	Code       codes.Code
	Message    string
	Violations []*errdetails.BadRequest_FieldViolation // INVALID_ARGUMENT: one per bad field
	RetryDelay time.Duration                           // RESOURCE_EXHAUSTED, UNAVAILABLE: wait this long
	Reason     string                                  // ErrorInfo.reason, e.g. "QUEUE_FULL"
}

// DetailsOf reads err's status and details (Code OK for a nil error).
func DetailsOf(err error) Details {
	st := status.Convert(err)
	out := Details{Code: st.Code(), Message: st.Message()}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.BadRequest:
			out.Violations = append(out.Violations, d.GetFieldViolations()...)
		case *errdetails.RetryInfo:
			out.RetryDelay = d.GetRetryDelay().AsDuration()
		case *errdetails.ErrorInfo:
			out.Reason = d.GetReason()
		}
	}
	return out
}

// Retryable says whether a failed call may be sent again after a delay: the server was busy
// (RESOURCE_EXHAUSTED with RetryInfo) or unavailable (starting, stopping, unreachable).
func Retryable(d Details) bool {
	switch d.Code {
	case codes.Unavailable:
		return true
	case codes.ResourceExhausted:
		return d.RetryDelay > 0 // without RetryInfo it is a message over the size limit
	}
	return false
}
