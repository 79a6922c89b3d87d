package pinsvc

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestTarget(t *testing.T) {
	for endpoint, want := range map[string]string{
		"/run/pinsvc/pinsvc.sock":        "unix:///run/pinsvc/pinsvc.sock",
		"unix:///run/pinsvc/pinsvc.sock": "unix:///run/pinsvc/pinsvc.sock",
		"127.0.0.1:9440":                 "127.0.0.1:9440",
		"node-a.example:9440":            "node-a.example:9440",
	} {
		if got, err := Target(endpoint); err != nil || got != want {
			t.Errorf("Target(%q) = %q, %v; want %q", endpoint, got, err, want)
		}
	}
	for _, endpoint := range []string{"", "https://node-a:9440"} {
		if got, err := Target(endpoint); err == nil {
			t.Errorf("Target(%q) = %q, want an error", endpoint, got)
		}
	}
}

func TestDialNamesTheTLSFileItCannotUse(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "nowhere.pem")
	for files, want := range map[TLSFiles]string{
		{Cert: "c", Key: "k", CA: missing}: "TLS CA " + missing + ": cannot read",
		{Cert: "c", Key: "k", CA: notPEM}:  "TLS CA " + notPEM + ": not a PEM file",
		{Cert: "c", Key: "k"}:              "needs Cert, Key and CA: TLS CA not given",
	} {
		_, err := Dial("127.0.0.1:9440", Options{TLS: &files})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Dial with %+v: %v; want an error containing %q", files, err, want)
		}
	}
}

func TestErrorKeepsTheGRPCCode(t *testing.T) {
	err := wrap("CheckSpace", status.Error(codes.InvalidArgument, "bad reference \"x\""))
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.InvalidArgument || e.Op != "CheckSpace" {
		t.Fatalf("wrap: %#v", err)
	}
	if Code(err) != codes.InvalidArgument || status.Code(err) != codes.InvalidArgument {
		t.Errorf("Code(err) = %v, status.Code(err) = %v", Code(err), status.Code(err))
	}
	if got := err.Error(); got != `pinsvc CheckSpace: InvalidArgument: bad reference "x"` {
		t.Errorf("Error() = %q", got)
	}
	if wrap("GetStatus", nil) != nil || Code(nil) != codes.OK {
		t.Error("nil must stay nil")
	}
}

func TestErrorNamesTheAgentsReason(t *testing.T) {
	s, err := status.New(codes.Unavailable, "registry down").WithDetails(
		&errdetails.ErrorInfo{Reason: "REGISTRY", Domain: Domain})
	if err != nil {
		t.Fatal(err)
	}
	var e *Error
	if !errors.As(wrap("Apply", s.Err()), &e) || e.Reason != "REGISTRY" || e.Retryable() {
		t.Errorf("an agent's UNAVAILABLE with a reason: %#v, want Reason REGISTRY, not retryable", e)
	}
	if !errors.As(wrap("Apply", status.Error(codes.Unavailable, "connection refused")), &e) ||
		e.Reason != "" || !e.Retryable() {
		t.Errorf("an unreachable agent: %#v, want no reason, retryable", e)
	}
}
